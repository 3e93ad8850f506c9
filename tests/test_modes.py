"""Test mode never reaches live mode (issue 16, item 3), on SQLite and PostgreSQL.

A live workspace gets one object of every kind through the product itself: credits, a
live instance (shared-small, on the instant upstream) with history, a conversation and
usage, an extra instance key, a knowledge base with a document attached to it, caps,
webhook endpoints (one the alert webhook) with deliveries, an invitation, and an account
key besides the first. Then an owner-role `auxen_test_` key of the same workspace calls
EVERY REST route (taken from the app's own route table, through the permission matrix
that is checked against it) and EVERY MCP tool (from the server's own tool list),
aimed at those live objects. Nothing it gets back names any live object, and every live
row of the workspace is exactly as it was (the audit log only gains records of what the
test key did)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from auxen.store.db import Database
from auxen.store.models import Instance, InstanceState
from tests.ledger_checks import sql
from tests.mcp_clients import http_client
from tests.servers import AuxenServer, instant_env, wait_for_state
from tests.test_permissions import MCP_TOOLS, NOT_KEYED, PAGE_PREFIXES, REST, _app_routes

HOOK_PATH = "/services/T0LIVE/B0LIVE/live-capability-path"


@dataclass
class Live:
    """The live workspace, its objects, and the test key that must not reach them."""

    server: AuxenServer
    ws: str
    live_key: str
    test_key: str
    ids: dict[str, str] = field(default_factory=dict)

    def sql(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        return sql(self.server.database_url, query, **params)


@pytest.fixture(scope="module")
def live(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("modes")
    models = root / "models"
    (models / "tiny").mkdir(parents=True)
    (models / "tiny" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    server = AuxenServer(
        root / "data",
        database_url,
        {
            **instant_env(),
            "AUXEN_MODELS_DIR": str(models),
            # Each live delivery is tried once, so the delivery log holds still.
            "AUXEN_NOTIFY_MAX_ATTEMPTS": "1",
        },
    ).start()
    try:
        ws, live_key = server.workspace("live-owner@example.com", usd="5")
        with server.client(live_key) as http:
            made = http.post(
                "/v1/keys", json={"name": "tester", "livemode": False, "role": "owner"}
            )
            assert made.status_code == 201 and made.json()["livemode"] is False, made.text
            world = Live(server, ws, live_key, made.json()["key"])
            _make_live_objects(world, http, str(models / "tiny"))
        yield world
    finally:
        server.stop_clean()


def _make_live_objects(world: Live, http: Any, model: str) -> None:
    ids = world.ids
    made = http.post(
        "/v1/instances",
        json={"model": model, "tier": "shared-small", "history": True, "spend_cap_usd": "2"},
    )
    assert made.status_code == 202, made.text
    ids["instance"] = made.json()["id"]
    ready = wait_for_state(http, ids["instance"], {"ready", "failed"}, timeout=120)
    assert ready["state"] == "ready", ready["last_error"]
    asked = http.post(
        f"/v1/instances/{ids['instance']}/query",
        json={"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4},
    )
    assert asked.status_code == 200, asked.text
    ids["conversation"] = asked.json()["conversation_id"]
    extra = http.post(f"/v1/instances/{ids['instance']}/keys", json={"name": "extra"})
    assert extra.status_code == 201, extra.text
    ids["instance_key"] = extra.json()["id"]
    account = http.post("/v1/keys", json={"name": "live admin", "role": "admin"})
    ids["account_key"] = account.json()["id"]
    kb = http.post("/v1/knowledge-bases", json={"name": "live kb"})
    assert kb.status_code == 201, kb.text
    ids["kb"] = kb.json()["id"]
    doc = http.post(
        f"/v1/knowledge-bases/{ids['kb']}/documents",
        json={"documents": [{"title": "live doc", "text": "Live mode facts about herons."}]},
    )
    assert doc.status_code == 201, doc.text
    ids["document"] = doc.json()["data"][0]["id"]
    attached = http.post(
        f"/v1/instances/{ids['instance']}/knowledge-bases", json={"knowledge_base_id": ids["kb"]}
    )
    assert attached.status_code in (200, 201), attached.text
    assert http.post("/v1/caps", json={"scope": "monthly", "amount_usd": "3"}).status_code == 200
    # Webhooks to a host that resolves on this machine: the guard refuses it (it is not
    # a public address), so deliveries fail without any traffic leaving.
    hook = http.post("/v1/notifications/webhooks", json={"url": f"https://localhost{HOOK_PATH}"})
    assert hook.status_code == 201, hook.text
    ids["webhook"] = hook.json()["id"]
    alert = http.put("/v1/alerts/webhook", json={"url": "https://localhost/live-alerts"})
    assert alert.status_code == 200, alert.text
    ids["alert_webhook"] = alert.json()["webhook_endpoint_id"]
    sent = http.post("/v1/invites", json={"email": "invitee@example.com"})
    assert sent.status_code == 201, sent.text
    ids["invite"] = sent.json()["id"]
    ids["owner_user"] = http.get("/v1/members").json()["data"][0]["user_id"]
    # A live key made after the endpoint: its notification is delivered (and fails) to it.
    later = http.post("/v1/keys", json={"name": "second live", "role": "member"})
    ids["later_key"] = later.json()["id"]
    _settle(world)


def _settle(world: Live) -> None:
    """Wait for the notification worker to fan out and try every live delivery once."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        busy = world.sql(
            "SELECT (SELECT COUNT(*) FROM notification WHERE workspace_id = :w AND "
            "fanned_out_at IS NULL) + (SELECT COUNT(*) FROM notification_delivery WHERE "
            "workspace_id = :w AND state = 'pending')",
            w=world.ws,
        )[0][0]
        if busy == 0:
            return
        time.sleep(0.5)
    raise AssertionError("the notification worker did not settle")


# -- what "live" is, in the database ------------------------------------------------

MODE_TABLES = (
    "api_key", "instance", "knowledge_base", "ledger_entry", "reservation", "spending_cap",
    "alert", "conversation", "notification", "webhook_endpoint",
)  # fmt: skip
CHILDREN = {  # table: (column, parent table)
    "usage_record": ("instance_id", "instance"),
    "kb_document": ("knowledge_base_id", "knowledge_base"),
    "kb_attachment": ("instance_id", "instance"),
    "conversation_turn": ("conversation_id", "conversation"),
    "notification_delivery": ("notification_id", "notification"),
}
WORKSPACE_WIDE = ("membership", "invite", "provider_credential", "notification_preference",
                  "oauth_token", "oauth_consent")  # fmt: skip
VOLATILE = {"last_used_at"}  # written off the request path, at most once a minute


def live_rows(world: Live) -> dict[str, list[str]]:
    """Every live row of the workspace, table by table, as stable text."""
    live = {
        **{t: f"SELECT * FROM {t} WHERE workspace_id = :w AND livemode" for t in MODE_TABLES},
        **{
            t: f"SELECT * FROM {t} WHERE workspace_id = :w AND {c} IN "
            f"(SELECT id FROM {p} WHERE livemode)"
            for t, (c, p) in CHILDREN.items()
        },
        "notification_attempt": "SELECT * FROM notification_attempt WHERE workspace_id = :w "
        "AND delivery_id IN (SELECT d.id FROM notification_delivery d JOIN notification n "
        "ON n.id = d.notification_id WHERE n.livemode)",
        **{t: f"SELECT * FROM {t} WHERE workspace_id = :w" for t in WORKSPACE_WIDE},
        "workspace": "SELECT * FROM workspace WHERE id = :w",
    }
    out: dict[str, list[str]] = {}
    for table, query in live.items():
        rows = _dicts(world, query)
        out[table] = sorted(
            json.dumps({k: str(v) for k, v in r.items() if k not in VOLATILE}, sort_keys=True)
            for r in rows
        )
    return out


def _dicts(world: Live, query: str) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        db = Database(world.server.database_url)
        try:
            async with db.engine.connect() as conn:
                found = await conn.execute(sa.text(query), {"w": world.ws})
                return [dict(r._mapping) for r in found.all()]
        finally:
            await db.close()

    return asyncio.run(run())


def live_ids(world: Live) -> set[str]:
    """Every id of a live row (and of the workspace-wide rows a test key must not read),
    and the live webhook's capability path: none may appear in what the test key gets."""
    found = {HOOK_PATH}
    for table, rows in live_rows(world).items():
        if table in ("workspace", "membership"):
            continue  # the workspace and the people in it are not per mode
        for row in rows:
            ident = json.loads(row).get("id")
            if ident:
                found.add(ident)
    found.discard("")
    assert world.ids["instance"] in found and world.ids["document"] in found
    return found


# -- the walk -----------------------------------------------------------------------


def _rest_call(world: Live, method: str, template: str) -> tuple[str, Any, dict[str, str]]:
    """The route aimed at live objects: (path, JSON body, query parameters)."""
    ids = world.ids
    live_key_id = ids["account_key"]
    path = (
        template.replace("{instance_id}", ids["instance"])
        .replace("{kb_id}", ids["kb"])
        .replace("{doc_id}", ids["document"])
        .replace("{user_id}", ids["owner_user"])
        .replace("{provider}", "runpod")
    )
    if "{id}" in path:
        by_prefix = {
            "/v1/instances/": ids["instance"],
            "/v1/keys/": live_key_id,
            "/v1/invites/": ids["invite"],
            "/v1/conversations/": ids["conversation"],
            "/v1/notifications/webhooks/": ids["webhook"],
        }
        path = path.replace("{id}", next(v for k, v in by_prefix.items() if path.startswith(k)))
    bodies: dict[tuple[str, str], Any] = {
        ("POST", "/v1/instances"): {"model": "no-such/model"},
        ("POST", "/v1/instances/{id}/keys"): {"name": "into live"},
        ("POST", "/v1/keys"): {"name": "live from test", "livemode": True, "role": "owner"},
        ("POST", "/v1/caps"): {
            "scope": "instance", "instance_id": ids["instance"], "amount_usd": "0.01",
        },
        ("PUT", "/v1/alerts/webhook"): {"url": None},
        ("POST", "/v1/knowledge-bases"): {"name": "live kb"},
        ("POST", "/v1/instances/{id}/knowledge-bases"): {"knowledge_base_id": ids["kb"]},
        ("POST", "/v1/instances/{id}/query"): {
            "prompt": "hi", "conversation_id": ids["conversation"],
        },
        ("POST", "/v1/notifications/webhooks"): {"url": "https://localhost/test-mode-hook"},
        ("PUT", "/v1/notifications/preferences"): {
            "events": {"instance_failed": {"email": [], "webhook": False}}
        },
        ("POST", "/v1/workspace/transfer"): {"user_id": ids["owner_user"]},
        ("PATCH", "/v1/members/{user_id}"): {"role": "member"},
        ("PUT", "/v1/credentials/{provider}"): {"secret": "rpa_" + "x" * 40},
    }  # fmt: skip
    params = {"confirm": world.ws} if (method, template) == ("DELETE", "/v1/workspace") else {}
    if template == "/v1/usage":
        params = {"instance_id": ids["instance"]}
    body = bodies.get((method, template), REST[(method, template)].body)
    return path, body, params


def _tool_args(world: Live, name: str) -> dict[str, Any]:
    ids = world.ids
    args = dict(MCP_TOOLS[name].body or {})
    for key in list(args):
        args[key] = {
            "instance_id": ids["instance"],
            "knowledge_base_id": ids["kb"],
            "document_id": ids["document"],
            "conversation_id": ids["conversation"],
        }.get(key, args[key])
    extra: dict[str, dict[str, Any]] = {
        "set_spending_cap": {
            "scope": "instance", "instance_id": ids["instance"], "amount_usd": 0.01,
        },
        "create_knowledge_base": {"name": "live kb"},
        "get_usage": {"instance_id": ids["instance"]},
        "query_instance": {
            "instance_id": ids["instance"], "prompt": "hi", "conversation_id": ids["conversation"],
        },
    }  # fmt: skip
    return {**args, **extra.get(name, {})}


def test_the_walk_covers_every_route_and_tool(tmp_path: Path) -> None:
    routes = {r for r in _app_routes(tmp_path) if not r[1].startswith(PAGE_PREFIXES)}
    assert routes - set(NOT_KEYED) == set(REST)


def test_a_test_key_neither_sees_nor_changes_anything_live(live: Live) -> None:
    before = live_rows(live)
    secrets = live_ids(live)
    leaks: list[str] = []
    with live.server.client(live.test_key) as http:
        for method, template in REST:
            path, body, params = _rest_call(live, method, template)
            reply = http.request(method, path, json=body, params=params)
            sent = path + json.dumps(body) + json.dumps(params)  # an id asked for may be echoed
            seen = [s for s in secrets if s in reply.text and s not in sent]
            if seen:
                leaks.append(f"{method} {template} ({reply.status_code}) shows {seen}")
        # The refusals a test key gets for live objects and live mode, by name.
        minted = http.post("/v1/keys", json={"livemode": True, "role": "member"})
        assert minted.status_code == 403 and minted.json()["error"]["param"] == "livemode"
        revoke = http.delete(f"/v1/keys/{live.ids['account_key']}")
        assert revoke.status_code == 404, revoke.text
        assert http.get("/v1/audit").json()["error"]["code"] == "permission_denied"
        listed = http.get("/v1/keys").json()["data"]
        assert listed and all(k["livemode"] is False for k in listed)

    async def tools() -> None:
        async with http_client(live.server.url, live.test_key) as client:
            listed = {t.name for t in (await client.list_tools()).tools}
            assert listed == set(MCP_TOOLS)
            for name in sorted(listed):
                args = _tool_args(live, name)
                result = await client.call_tool(name, args)
                text = json.dumps(result.structured_content) + " ".join(
                    getattr(c, "text", "") for c in result.content
                )
                seen = [s for s in secrets if s in text and s not in json.dumps(args)]
                if seen:
                    leaks.append(f"tool {name} shows {seen}")

    asyncio.run(tools())
    assert leaks == [], "\n".join(leaks)
    after = live_rows(live)
    changed = {t: (before[t], after[t]) for t in before if before[t] != after[t]}
    assert changed == {}, json.dumps(changed, indent=1)[:4000]
    # The test key's own work happened, in test mode.
    made = live.sql(
        "SELECT COUNT(*) FROM knowledge_base WHERE workspace_id = :w AND NOT livemode",
        w=live.ws,
    )
    assert made[0][0] >= 1


def test_what_acts_on_the_whole_workspace_counts_both_modes(live: Live) -> None:
    """Deleting a workspace is live-mode only, and waits for its test-mode instances too."""
    ws, key = live.server.workspace("both-modes@example.com")

    async def add(db: Database) -> str:
        # Another provider's instance: this server's reconciler leaves it alone.
        instance = Instance(
            workspace_id=ws, livemode=False, model="org/m", gpu_type="cpu", tier="dedicated",
            provider="runpod", state=InstanceState.STOPPING, hourly_price_micros=0,
            ttl_seconds=60, expires_at=datetime.now(UTC) + timedelta(hours=1),
        )  # fmt: skip
        async with db.scoped(ws) as session:
            session.add(instance)
            await session.commit()
        return instance.id

    async def run() -> str:
        db = Database(live.server.database_url)
        try:
            return await add(db)
        finally:
            await db.close()

    test_instance = asyncio.run(run())
    with live.server.client(key) as http:
        refused = http.delete("/v1/workspace", params={"confirm": ws})
        assert refused.status_code == 409 and test_instance in refused.text, refused.text
