"""People in a workspace, through a running server: invitations (single use, expiring,
revocable, only for the invited email), roles and their limits, removal that ends the
person's agents and browsers at once, ownership transfer, deleting the workspace, and
the audit log that records all of it (without content) and forgets old events.
Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
import sqlalchemy as sa

from auxen.store.db import Database
from auxen.store.models import AuditEvent, Instance, InstanceState, Invite
from tests.browsers import csrf_of
from tests.mcp_clients import INITIALIZE, http_client
from tests.servers import AuxenServer
from tests.test_oauth import REDIRECT, Flow

PASSWORD = "members test passphrase"


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuxenServer]:
    root = tmp_path_factory.mktemp("members")
    srv = AuxenServer(root / "data", database_url, {"AUXEN_AUDIT_RETENTION_DAYS": "30"}).start()
    try:
        yield srv
    finally:
        log = srv.stop_clean()
        assert PASSWORD not in log


def db_run(server: AuxenServer, body: Any) -> Any:
    async def go() -> Any:
        db = Database(server.database_url)
        try:
            return await body(db)
        finally:
            await db.close()

    return asyncio.run(go())


class Browser:
    """A person with an account (signed up through the pages, so with their own
    workspace too) and a signed-in browser."""

    def __init__(self, server: AuxenServer, email: str) -> None:
        self.email = email
        self.http = httpx2.Client(base_url=server.url, follow_redirects=False, timeout=30)
        form = self.http.get("/signup")
        done = self.http.post(
            "/signup",
            data={"csrf_token": csrf_of(form), "email": email, "password": PASSWORD,
                  "workspace": f"{email} own"},
        )  # fmt: skip
        assert done.status_code == 303, done.text

    def accept(self, link: str) -> httpx2.Response:
        path = urlsplit(link).path
        page = self.http.get(path)
        if page.status_code != 200:
            return page
        return self.http.post(path, data={"csrf_token": csrf_of(page)})

    def signed_in(self) -> bool:
        return self.http.get("/account").status_code == 200


def invite(http: httpx2.Client, email: str, role: str = "member") -> dict[str, Any]:
    reply = http.post("/v1/invites", json={"email": email, "role": role})
    assert reply.status_code == 201, reply.text
    body: dict[str, Any] = reply.json()
    assert body["url"].startswith(f"{http.base_url}/invite/") and body["status"] == "pending"
    return body


def member_id(http: httpx2.Client, email: str) -> str:
    rows = http.get("/v1/members").json()["data"]
    return str(next(m["user_id"] for m in rows if m["email"] == email))


def oauth_token(
    server: AuxenServer, person: Browser, workspace_id: str, scope: str | None = None
) -> str:
    """An agent's access token for `person` in `workspace_id` (consent page, PKCE)."""

    class Holder:
        http = person.http

    flow = Flow(server, Holder, scope)  # type: ignore[arg-type]
    if scope is not None:  # a client registered for more than the default scopes
        reply = httpx2.post(
            f"{server.url}/register",
            json={"client_name": "Scoped", "redirect_uris": [REDIRECT], "scope": scope,
                  "token_endpoint_auth_method": "none",
                  "grant_types": ["authorization_code", "refresh_token"]},
        )  # fmt: skip
        flow.client_id = reply.json()["client_id"]
    step = person.http.get(flow.authorize_url())
    page = person.http.get(step.headers["location"])
    assert page.status_code == 200 and workspace_id in page.text, page.text
    request_token = re.search(r'name="request" value="([^"]+)"', page.text)
    assert request_token
    answer = person.http.post(
        "/oauth/consent",
        data={"csrf_token": csrf_of(page), "request": request_token.group(1),
              "workspace_id": workspace_id, "decision": "approve"},
    )  # fmt: skip
    location = answer.headers["location"]
    assert location.startswith(REDIRECT), location
    code = parse_qs(urlsplit(location).query)["code"][0]
    tokens = flow.exchange(code)
    assert tokens.status_code == 200, tokens.text
    return str(tokens.json()["access_token"])


def mcp_status(server: AuxenServer, token: str) -> int:
    reply = httpx2.post(
        f"{server.url}/mcp",
        json=INITIALIZE,
        headers={"Authorization": f"Bearer {token}",
                 "Accept": "application/json, text/event-stream"},
    )  # fmt: skip
    return reply.status_code


def test_an_invited_person_joins_and_removal_ends_their_access_at_once(
    server: AuxenServer,
) -> None:
    ws, owner_key = server.workspace("team-owner@example.com")
    with server.client(owner_key) as owner:
        sent = invite(owner, "newcomer@example.com", "admin")
        person = Browser(server, "newcomer@example.com")
        joined = person.accept(sent["url"])
        assert joined.status_code == 303 and joined.headers["location"] == "/members"
        # The members page now works in the invited workspace (the current one).
        page = person.http.get("/members")
        assert page.status_code == 200 and "team-owner@example.com" in page.text
        roles = {m["email"]: m["role"] for m in owner.get("/v1/members").json()["data"]}
        assert roles == {"team-owner@example.com": "owner", "newcomer@example.com": "admin"}
        # The link worked once.
        again = person.accept(sent["url"])
        assert again.status_code == 409 and "already used" in again.text
        # Their agent works in the workspace...
        token = oauth_token(server, person, ws)
        assert mcp_status(server, token) == 200
        # ...until they are removed: then the token, and the browser, stop at once.
        uid = member_id(owner, "newcomer@example.com")
        removed = owner.delete(f"/v1/members/{uid}")
        assert removed.status_code == 200 and removed.json()["removed"] is True, removed.text
        assert mcp_status(server, token) == 401
        assert not person.signed_in()
        assert "newcomer@example.com" not in owner.get("/v1/members").text
        actions = [e["action"] for e in owner.get("/v1/audit").json()["data"]]
        assert {"member.invite", "member.join", "oauth.consent", "member.remove"} <= set(actions)


def test_a_demotion_applies_to_the_agent_at_once(server: AuxenServer) -> None:
    ws, owner_key = server.workspace("demoter@example.com")
    with server.client(owner_key) as owner:
        person = Browser(server, "demoted@example.com")
        assert person.accept(invite(owner, person.email, "admin")["url"]).status_code == 303
        token = oauth_token(server, person, ws, scope="instances:read billing")
        # OAuth tokens are for /mcp only.
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx2.get(f"{server.url}/v1/audit", headers=headers).status_code == 401

        async def set_cap() -> str:
            async with http_client(server.url, token) as client:
                result = await client.call_tool(
                    "set_spending_cap", {"scope": "monthly", "amount_usd": None}
                )
                return result.content[0].text if result.is_error else "ok"  # type: ignore[union-attr]

        assert asyncio.run(set_cap()) == "ok"  # an admin's agent may change caps
        uid = member_id(owner, person.email)
        demoted = owner.patch(f"/v1/members/{uid}", json={"role": "member"})
        assert demoted.status_code == 200 and demoted.json()["role"] == "member"
        assert asyncio.run(set_cap()).startswith("permission_denied")  # the same token, now


def test_invitations_are_single_use_expire_and_can_be_withdrawn(server: AuxenServer) -> None:
    _, owner_key = server.workspace("inviter@example.com")
    with server.client(owner_key) as owner:
        # Only for the invited email.
        wrong = Browser(server, "someone-else@example.com")
        link = invite(owner, "intended@example.com")
        page = wrong.http.get(urlsplit(link["url"]).path)
        assert page.status_code == 200 and "for intended@example.com" in page.text
        refused = wrong.http.post(urlsplit(link["url"]).path, data={"csrf_token": csrf_of(page)})
        assert refused.status_code == 403
        # Withdrawn.
        owner.delete(f"/v1/invites/{link['id']}").raise_for_status()
        intended = Browser(server, "intended@example.com")
        gone = intended.accept(link["url"])
        assert gone.status_code == 409 and "withdrawn" in gone.text
        # Expired.
        late = invite(owner, "intended@example.com")

        async def expire(db: Database) -> None:
            async with db.engine.begin() as conn:
                await conn.execute(
                    sa.update(Invite)
                    .where(Invite.id == late["id"])  # type: ignore[arg-type]
                    .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
                )

        db_run(server, expire)
        expired = intended.accept(late["url"])
        assert expired.status_code == 409 and "expired" in expired.text
        # A made-up link.
        assert intended.http.get("/invite/" + "A" * 43).status_code == 404
        statuses = {i["id"]: i["status"] for i in owner.get("/v1/invites").json()["data"]}
        assert statuses[link["id"]] == "revoked" and statuses[late["id"]] == "expired"

        # The token is stored only as its hash.
        async def stored(db: Database) -> list[bytes]:
            async with db.engine.connect() as conn:
                return list((await conn.execute(sa.select(Invite.token_hash))).scalars())  # type: ignore[call-overload]

        token = urlsplit(late["url"]).path.rsplit("/", 1)[1]
        assert all(token.encode() not in h for h in db_run(server, stored))


def test_admins_manage_members_but_not_admins_or_the_owner(server: AuxenServer) -> None:
    _, owner_key = server.workspace("boss@example.com")
    with server.client(owner_key) as owner:
        admin_key = owner.post("/v1/keys", json={"role": "admin"}).json()["key"]
        a = Browser(server, "first-admin@example.com")
        m = Browser(server, "plain-member@example.com")
        assert a.accept(invite(owner, a.email, "admin")["url"]).status_code == 303
        assert m.accept(invite(owner, m.email)["url"]).status_code == 303
        admin_id, member_id_ = member_id(owner, a.email), member_id(owner, m.email)
        owner_id = member_id(owner, "boss@example.com")
        with server.client(admin_key) as admin:
            too_high = admin.post("/v1/invites", json={"email": "x@example.com", "role": "owner"})
            assert too_high.status_code == 400 and too_high.json()["error"]["param"] == "role"
            demote = admin.patch(f"/v1/members/{admin_id}", json={"role": "member"})
            assert demote.status_code == 403
            assert admin.delete(f"/v1/members/{admin_id}").status_code == 403
            removed_owner = admin.delete(f"/v1/members/{owner_id}")
            assert removed_owner.status_code == 409 and "transfer" in removed_owner.text
            promoted = admin.patch(f"/v1/members/{member_id_}", json={"role": "admin"})
            assert promoted.status_code == 200 and promoted.json()["role"] == "admin"
            transfer = admin.post("/v1/workspace/transfer", json={"user_id": member_id_})
            assert transfer.status_code == 403
        # The owner hands ownership over and becomes an admin.
        moved = owner.post("/v1/workspace/transfer", json={"user_id": admin_id})
        assert moved.status_code == 200 and moved.json()["role"] == "owner"
        roles = {r["email"]: r["role"] for r in owner.get("/v1/members").json()["data"]}
        assert roles["boss@example.com"] == "admin" and roles[a.email] == "owner"
        assert owner.delete(f"/v1/members/{admin_id}").status_code == 409  # the new owner


def test_deleting_a_workspace_waits_for_its_instances(server: AuxenServer) -> None:
    ws, owner_key = server.workspace("leaver@example.com")

    async def running(db: Database, state: InstanceState) -> str:
        # Another provider's instance: this server's reconciler (local) leaves it alone,
        # so its state holds while the test looks.
        instance = Instance(
            workspace_id=ws, livemode=True, model="org/m", gpu_type="cpu", tier="dedicated",
            provider="runpod", state=state, hourly_price_micros=0, ttl_seconds=60,
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )  # fmt: skip
        async with db.scoped(ws) as session:
            session.add(instance)
            await session.commit()
        return instance.id

    async def set_state(db: Database, instance_id: str) -> None:
        async with db.scoped(ws) as session:
            await session.exec(
                sa.update(Instance)
                .where(Instance.id == instance_id)  # type: ignore[arg-type]
                .values(state=InstanceState.DESTROYED)
            )
            await session.commit()

    # A stopping instance (its destroy under way) still holds resources.
    instance_id = db_run(server, lambda db: running(db, InstanceState.STOPPING))
    with server.client(owner_key) as owner:
        assert owner.delete("/v1/workspace").json()["error"]["param"] == "confirm"
        refused = owner.delete("/v1/workspace", params={"confirm": ws})
        assert refused.status_code == 409 and instance_id in refused.text
        db_run(server, lambda db: set_state(db, instance_id))
        owner.post("/v1/knowledge-bases", json={"name": "doomed"}).raise_for_status()
        done = owner.delete("/v1/workspace", params={"confirm": ws})
        assert done.status_code == 200 and done.json() == {
            "id": ws, "object": "workspace", "deleted": True,
        }  # fmt: skip
        assert owner.get("/v1/instances").status_code == 401

    async def left(db: Database) -> int:
        async with db.engine.connect() as conn:
            total = 0
            # The ledger and audit log stay for the retention period (test_money_records).
            for table in ("instance", "api_key", "membership", "knowledge_base"):
                total += (
                    await conn.execute(
                        sa.text(f"SELECT count(*) FROM {table} WHERE workspace_id = :w"), {"w": ws}
                    )
                ).scalar_one()
            return int(total)

    assert db_run(server, left) == 0


def test_the_audit_log_records_who_did_what_pages_back_and_forgets(server: AuxenServer) -> None:
    ws, owner_key = server.workspace("audited@example.com")
    with server.client(owner_key) as owner:
        made = owner.post("/v1/keys", json={"name": "secret-name-not-logged", "role": "member"})
        owner.delete(f"/v1/keys/{made.json()['id']}").raise_for_status()
        owner.post("/v1/caps", json={"scope": "monthly", "amount_usd": 5}).raise_for_status()
        page = owner.get("/v1/audit", params={"limit": 2}, headers={"User-Agent": "audit-test"})
        events = page.json()["data"]
        assert [e["action"] for e in events] == ["cap.change", "key.revoke"]
        first = events[1]
        assert first["actor_type"] == "api_key" and first["address"] == "127.0.0.1"
        assert first["target_id"] == made.json()["id"]
        older = owner.get("/v1/audit", params={"limit": 2, "before": page.json()["next_before"]})
        assert [e["action"] for e in older.json()["data"]] == ["key.create"]
        assert older.json()["next_before"] is None
        assert "secret-name-not-logged" not in owner.get("/v1/audit").text

    # Events past the retention period (30 days here) are swept by the reconciler loop.
    async def backdate(db: Database) -> None:
        async with db.engine.begin() as conn:
            await conn.execute(
                sa.update(AuditEvent)
                .where(AuditEvent.workspace_id == ws)  # type: ignore[arg-type]
                .where(AuditEvent.action == "key.create")  # type: ignore[arg-type]
                .values(created_at=datetime.now(UTC) - timedelta(days=31))
            )

    db_run(server, backdate)
    deadline = time.monotonic() + 20
    with server.client(owner_key) as owner:
        while time.monotonic() < deadline:
            actions = [e["action"] for e in owner.get("/v1/audit").json()["data"]]
            if "key.create" not in actions:
                break
            time.sleep(0.5)
        assert actions == ["cap.change", "key.revoke"]


def test_sign_ins_are_audited_in_the_persons_workspaces(server: AuxenServer) -> None:
    person = Browser(server, "signs-in@example.com")
    form = person.http.get("/login")
    bad = person.http.post(
        "/login",
        data={"csrf_token": csrf_of(form), "email": person.email, "password": "wrong" * 4},
    )
    assert bad.status_code == 401
    good = person.http.post(
        "/login",
        data={"csrf_token": csrf_of(form), "email": person.email, "password": PASSWORD},
    )
    assert good.status_code == 303
    audit = person.http.get("/audit")
    assert audit.status_code == 200, audit.text  # the owner of their own workspace
    assert "login.failure" in audit.text and "login.success" in audit.text
    assert PASSWORD not in audit.text


def test_auxens_own_destroys_are_audited_as_the_system(server: AuxenServer) -> None:
    """The reconciler destroys an instance whose time-to-live ran out; the log says it
    was Auxen, and why."""
    ws, owner_key = server.workspace("expiring@example.com")

    async def expired(db: Database) -> str:
        instance = Instance(
            workspace_id=ws, livemode=True, model="org/m", gpu_type="cpu", tier="dedicated",
            provider="local", state=InstanceState.READY, hourly_price_micros=0,
            ttl_seconds=60, expires_at=datetime.now(UTC) - timedelta(seconds=1),
        )  # fmt: skip
        async with db.scoped(ws) as session:
            session.add(instance)
            await session.commit()
        return instance.id

    instance_id = db_run(server, expired)
    deadline = time.monotonic() + 30
    with server.client(owner_key) as owner:
        while time.monotonic() < deadline:
            events = owner.get("/v1/audit").json()["data"]
            if events:
                break
            time.sleep(0.5)
    assert [(e["action"], e["actor_type"], e["target_id"], e["detail"]) for e in events] == [
        ("instance.destroy", "system", instance_id, {"reason": "ttl_expired"})
    ]
