"""Account keys act for the person who made them (issue 16, item 2), through two real
servers on one database (SQLite and PostgreSQL): a key made by an admin loses admin
rights when its maker is demoted (REST, MCP over HTTP and stdio; at once in the server
that made the change, within the key cache's bound in the other), keys of a removed
person stop working and show as disabled with why (audited, the owners told), a former
owner's owner-role keys act as admin after a transfer. (Migration 0015's backfill:
tests/test_key_migration.py.)"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa

from auxen.auth.authenticate import CACHE_TTL_S
from auxen.store.db import Database
from tests.browsers import csrf_of
from tests.mcp_clients import http_client, stdio_client
from tests.servers import AuxenServer
from tests.test_members import Browser, db_run, invite, member_id


@dataclass
class Pair:
    """Two server processes on one database and master key (a deployment of two)."""

    a: AuxenServer
    b: AuxenServer


@pytest.fixture(scope="module")
def pair(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("key-creators")
    env = {"AUXEN_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    a = AuxenServer(root / "a", database_url, dict(env)).start()
    b = AuxenServer(root / "b", database_url, dict(env)).start()
    try:
        yield Pair(a, b)
    finally:
        b.stop_clean()
        a.stop_clean()


def dashboard_key(person: Browser, name: str) -> str:
    """A key the person makes on the dashboard's keys page (their current workspace)."""
    page = person.http.get("/keys")
    assert page.status_code == 200, page.text
    made = person.http.post("/keys", data={"csrf_token": csrf_of(page), "name": name})
    assert made.status_code == 200, made.text
    found = re.search(r'value="(auxen_live_\w+)"', made.text)
    assert found, made.text
    return found.group(1)


def listed(http: httpx2.Client, key: str) -> dict[str, Any]:
    """The workspace's listing of `key` (its id is inside the key)."""
    rows = http.get("/v1/keys", params={"include_revoked": "true"}).json()["data"]
    return next(r for r in rows if r["id"] in key)


def team(server: AuxenServer, owner_email: str, admin_email: str) -> tuple[Browser, Browser, str]:
    """An owner (signed up, so with a workspace of their own) who invites an admin; the
    owner's dashboard key."""
    owner = Browser(server, owner_email)
    owner_key = dashboard_key(owner, "owner's key")
    with server.client(owner_key) as http:
        admin = Browser(server, admin_email)
        assert admin.accept(invite(http, admin_email, "admin")["url"]).status_code == 303
    return owner, admin, owner_key


async def _tool(client: Any, name: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(name, args)
    return result.content[0].text if result.is_error else "ok"  # type: ignore[no-any-return]


def mcp_http(server: AuxenServer, key: str, name: str, args: dict[str, Any]) -> str:
    async def go() -> str:
        async with http_client(server.url, key) as client:
            return await _tool(client, name, args)

    return asyncio.run(go())


NO_CAP = {"scope": "monthly", "amount_usd": None}  # an admin's call that changes nothing


def test_a_demoted_admins_keys_lose_admin_rights_everywhere(pair: Pair) -> None:
    a, b = pair.a, pair.b
    owner, admin, owner_key = team(a, "demote-owner@example.com", "demote-admin@example.com")
    key = dashboard_key(admin, "admin's key")
    with a.client(owner_key) as boss, a.client(key) as at_a, b.client(key) as at_b:
        row = listed(boss, key)
        assert (row["role"], row["effective_role"], row["created_via"]) == (
            "admin",
            "admin",
            "person",
        )
        assert row["created_by"] == admin.email and row["status"] == "active"
        # A key the admin's key makes acts for the admin too.
        made = at_a.post("/v1/keys", json={"name": "made by a key", "role": "admin"})
        assert made.status_code == 201, made.text
        assert made.json()["created_by"] == admin.email and made.json()["created_via"] == "api_key"
        second = made.json()["key"]
        assert at_a.get("/v1/audit").status_code == 200
        assert at_b.get("/v1/audit").status_code == 200  # server b now holds it in its cache
        assert mcp_http(a, key, "set_spending_cap", NO_CAP) == "ok"

        async def demote_while_stdio_runs() -> str:
            async with stdio_client(a, key) as client:
                before = await _tool(client, "set_spending_cap", NO_CAP)
                changed = await asyncio.to_thread(
                    boss.patch,
                    f"/v1/members/{member_id(boss, admin.email)}",
                    json={"role": "member"},
                )
                assert changed.status_code == 200, changed.text
                await asyncio.sleep(CACHE_TTL_S + 1)  # the stdio process's own key cache
                return before + " / " + await _tool(client, "set_spending_cap", NO_CAP)

        stdio = asyncio.run(demote_while_stdio_runs())
        assert stdio.startswith("ok / permission_denied"), stdio
        # The server that made the change applies it at once; the other within the bound.
        with a.client(second) as made_by_key:
            for http in (at_a, made_by_key):
                refused = http.get("/v1/audit")
                assert refused.status_code == 403, refused.text
                assert refused.json()["error"]["code"] == "permission_denied"
        assert at_a.get("/v1/instances").status_code == 200  # a member's rights remain
        assert mcp_http(a, key, "set_spending_cap", NO_CAP).startswith("permission_denied")
        assert at_b.get("/v1/audit").status_code == 403
        row = listed(boss, key)
        assert (row["role"], row["effective_role"]) == ("admin", "member")
        # Promoted again, the key is an admin's again: the rule, not a stored drop.
        boss.patch(f"/v1/members/{member_id(boss, admin.email)}", json={"role": "admin"})
        assert at_a.get("/v1/audit").status_code == 200
    owner.http.close()


def test_removing_a_person_disables_the_keys_they_made(pair: Pair) -> None:
    a, b = pair.a, pair.b
    owner, admin, owner_key = team(a, "remove-owner@example.com", "leaver@example.com")
    key = dashboard_key(admin, "leaver's key")
    with a.client(owner_key) as boss, a.client(key) as at_a, b.client(key) as at_b:
        assert at_a.get("/v1/instances").status_code == 200
        assert at_b.get("/v1/instances").status_code == 200
        # Demoted to member first: a member's key (made when they were an admin) too.
        leaver = member_id(boss, admin.email)
        boss.patch(f"/v1/members/{leaver}", json={"role": "member"}).raise_for_status()
        removed = boss.delete(f"/v1/members/{leaver}")
        assert removed.status_code == 200, removed.text
        gone = at_a.get("/v1/instances")
        assert gone.status_code == 401 and "removed" in gone.text, gone.text
        time.sleep(CACHE_TTL_S + 1)
        assert at_b.get("/v1/instances").status_code == 401
        row = listed(boss, key)
        assert row["status"] == "disabled" and row["effective_role"] is None
        assert row["disabled_at"] and "removed from the workspace" in row["disabled_reason"]
        events = boss.get("/v1/audit").json()["data"]
        assert any(e["action"] == "key.disable" and e["target_id"] == row["id"] for e in events)
        # The owners are told (a security event: queued for them whatever the preferences).
        told = db_run(
            a,
            lambda db: _rows(
                db, "SELECT data_json FROM notification WHERE event = 'api_keys_disabled'"
            ),
        )
        assert any(row["id"] in json.loads(d)["key_ids"] for (d,) in told)
        # The dashboard shows it disabled, and why.
        page = owner.http.get("/keys")
        assert page.status_code == 200
        line = next(tr for tr in page.text.split("<tr>") if row["prefix"][:12] in tr)
        assert "disabled" in line and "removed from the workspace" in line, line
        # Coming back does not bring the old key back.
        assert admin.accept(invite(boss, admin.email)["url"]).status_code == 303
        assert at_a.get("/v1/instances").status_code == 401
        assert listed(boss, owner_key)["status"] == "active"


def test_a_former_owners_keys_act_as_admin_after_a_transfer(pair: Pair) -> None:
    a = pair.a
    _, heir, owner_key = team(a, "transfer-owner@example.com", "heir@example.com")
    with a.client(owner_key) as old:
        assert listed(old, owner_key)["role"] == "owner"
        moved = old.post("/v1/workspace/transfer", json={"user_id": member_id(old, heir.email)})
        assert moved.status_code == 200, moved.text
        # Owner-only calls are refused (a wrong confirmation: refused or not, nothing goes).
        refused = old.delete("/v1/workspace", params={"confirm": "not-this-one"})
        assert refused.status_code == 403, refused.text
        back = old.post("/v1/workspace/transfer", json={"user_id": member_id(old, heir.email)})
        assert back.status_code == 403
        assert old.get("/v1/audit").status_code == 200  # an admin's rights remain
        row = listed(old, owner_key)
        assert (row["role"], row["effective_role"]) == ("owner", "admin")
        too_high = old.post("/v1/keys", json={"name": "still owner?", "role": "owner"})
        assert too_high.status_code == 403 and too_high.json()["error"]["param"] == "role"


async def _rows(db: Database, query: str, **params: Any) -> list[tuple[Any, ...]]:
    async with db.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(sa.text(query), params)).all()]
