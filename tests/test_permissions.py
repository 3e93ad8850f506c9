"""The permission matrix: every REST route and every MCP tool, called with an owner's,
an admin's and a member's account key of one workspace, is allowed or refused exactly as
`auxen.tools.permissions` says. The routes come from the app's own route table and the
tools from the MCP server's own tool list: a route or tool added later without an entry
here fails `test_every_route_and_tool_is_in_the_matrix`.

Denied calls must be refused (403 `permission_denied`, or a `permission_denied` tool
error) before any work, so every call carries input that passes parsing. Allowed calls
only have to get past the permission check: those that would start work (a vLLM
server, a Stripe checkout, deleting the workspace) carry input the operation itself
refuses (an unknown model, an unknown id, a missing confirmation), so "allowed" is
asserted as "neither 401 nor 403", and the call changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.routing import Mount, Route

from auxen.app import create_app
from auxen.config import Settings
from auxen.mcp_server.server import build_server
from auxen.runtime import Runtime
from auxen.store.models import Role
from tests.mcp_clients import http_client
from tests.servers import AuxenServer

MEMBER, ADMIN, OWNER = Role.MEMBER, Role.ADMIN, Role.OWNER
ROLES = (MEMBER, ADMIN, OWNER)
RANK = {MEMBER: 0, ADMIN: 1, OWNER: 2}
NOBODY = "x" * 20  # an id of nothing: allowed calls end in 404 and change nothing


@dataclass(frozen=True)
class Call:
    least: Role
    body: dict[str, Any] | None = None
    params: dict[str, str] = field(default_factory=dict)


# Every REST route an account key reaches, with the least role it needs.
REST: dict[tuple[str, str], Call] = {
    ("POST", "/v1/instances"): Call(MEMBER, {"model": "no-such/model"}),
    ("GET", "/v1/instances"): Call(MEMBER),
    ("GET", "/v1/instances/{id}"): Call(MEMBER),
    ("DELETE", "/v1/instances/{id}"): Call(MEMBER),
    ("POST", "/v1/instances/{id}/keys"): Call(MEMBER, {}),
    ("POST", "/v1/instances/{instance_id}/chat/completions"): Call(
        MEMBER, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    ),
    ("POST", "/v1/instances/{instance_id}/completions"): Call(MEMBER, {"prompt": "hi"}),
    ("GET", "/v1/instances/{instance_id}/models"): Call(MEMBER),
    ("POST", "/v1/keys"): Call(ADMIN, {"name": "matrix", "role": "member"}),
    ("GET", "/v1/keys"): Call(ADMIN),
    # Instance keys are a member's to revoke; account keys an admin's (see the test below).
    ("DELETE", "/v1/keys/{id}"): Call(MEMBER),
    ("GET", "/v1/usage"): Call(MEMBER),
    ("GET", "/v1/balance"): Call(MEMBER),
    ("POST", "/v1/caps"): Call(ADMIN, {"scope": "monthly", "amount_usd": None}),
    ("PUT", "/v1/alerts/webhook"): Call(ADMIN, {"url": None}),
    ("POST", "/v1/credits/checkout"): Call(ADMIN, {"amount_usd": 10}),
    ("POST", "/v1/knowledge-bases"): Call(MEMBER, {"name": ""}),
    ("GET", "/v1/knowledge-bases"): Call(MEMBER),
    ("GET", "/v1/knowledge-bases/{kb_id}"): Call(MEMBER),
    ("DELETE", "/v1/knowledge-bases/{kb_id}"): Call(MEMBER),
    ("POST", "/v1/knowledge-bases/{kb_id}/documents"): Call(
        MEMBER, {"documents": [{"title": "t", "text": "x"}]}
    ),
    ("GET", "/v1/knowledge-bases/{kb_id}/documents"): Call(MEMBER),
    ("DELETE", "/v1/knowledge-bases/{kb_id}/documents/{doc_id}"): Call(MEMBER),
    ("POST", "/v1/knowledge-bases/{kb_id}/search"): Call(MEMBER, {"query": "q"}),
    ("POST", "/v1/instances/{id}/knowledge-bases"): Call(MEMBER, {"knowledge_base_id": NOBODY}),
    ("GET", "/v1/instances/{id}/knowledge-bases"): Call(MEMBER),
    ("DELETE", "/v1/instances/{id}/knowledge-bases/{kb_id}"): Call(MEMBER),
    ("GET", "/v1/members"): Call(MEMBER),
    ("POST", "/v1/members"): Call(ADMIN, {"email": "not-an-email", "role": "member"}),
    ("PATCH", "/v1/members/{user_id}"): Call(ADMIN, {"role": "member"}),
    ("DELETE", "/v1/members/{user_id}"): Call(ADMIN),
    ("POST", "/v1/invites"): Call(ADMIN, {"email": "not-an-email", "role": "member"}),
    ("GET", "/v1/invites"): Call(ADMIN),
    ("DELETE", "/v1/invites/{id}"): Call(ADMIN),
    ("GET", "/v1/audit"): Call(ADMIN),
    ("GET", "/v1/credentials"): Call(ADMIN),
    ("POST", "/v1/instances/{id}/query"): Call(MEMBER, {"prompt": "hi"}),
    ("GET", "/v1/instances/{id}/conversations"): Call(MEMBER),
    ("GET", "/v1/conversations/{id}"): Call(MEMBER),
    ("DELETE", "/v1/conversations/{id}"): Call(MEMBER),
    ("GET", "/v1/notifications/preferences"): Call(MEMBER),
    # The default for instance_failed (owners by email, and webhooks): nothing changes.
    ("PUT", "/v1/notifications/preferences"): Call(
        ADMIN, {"events": {"instance_failed": {"email": ["owner"], "webhook": True}}}
    ),
    ("GET", "/v1/notifications/webhooks"): Call(MEMBER),
    ("POST", "/v1/notifications/webhooks"): Call(ADMIN, {"url": "http://not-https.example"}),
    ("DELETE", "/v1/notifications/webhooks/{id}"): Call(ADMIN),
    ("GET", "/v1/notifications/deliveries"): Call(MEMBER),
    # A provider no one stores credentials for: the admin's call is a 400, and nothing.
    ("PUT", "/v1/credentials/{provider}"): Call(ADMIN, {"secret": "not-a-provider-secret"}),
    ("DELETE", "/v1/credentials/{provider}"): Call(ADMIN),
    ("POST", "/v1/workspace/transfer"): Call(OWNER, {"user_id": NOBODY}),
    ("DELETE", "/v1/workspace"): Call(OWNER, params={"confirm": "not-this-workspace"}),
}

# Routes no account key is checked on, and why.
NOT_KEYED: dict[tuple[str, str], str] = {
    ("GET", "/health"): "liveness, public",
    ("POST", "/v1/stripe/webhook"): "Stripe's calls, verified by signature",
    ("*", "/mcp"): "MCP: every tool is in MCP_TOOLS below",
    ("*", "/static"): "stylesheet and icon",
    ("GET", "/.well-known/security.txt"): "public security surface",
    ("GET", "/security"): "public security surface",
    ("GET", "/status"): "public status page",
    ("GET", "/status.json"): "public status page",
    ("GET", "/invite/{token}"): "a person's page: the invitation itself is the credential",
    ("POST", "/invite/{token}"): "a person's page: CSRF + signed-in invitee",
}
# Pages for people (signed-in browser + CSRF; role checks through the same operations,
# covered by tests/test_members.py), and the OAuth authorization server.
PAGE_PREFIXES = (
    "/signup", "/login", "/logout", "/account", "/members", "/audit", "/oauth/consent",
    "/.well-known/oauth-", "/register", "/authorize", "/token", "/revoke", "/dashboard",
    "/instances", "/keys", "/knowledge-bases", "/usage", "/billing",
)  # fmt: skip

# Every MCP tool, the least role it needs, and arguments that pass its schema.
MCP_TOOLS: dict[str, Call] = {
    "list_models": Call(MEMBER, {}),
    "quote_instance": Call(MEMBER, {"model": "no-such/model"}),
    "provision_instance": Call(MEMBER, {"model": "no-such/model"}),
    "get_instance": Call(MEMBER, {"instance_id": f"inst_{NOBODY}"}),
    "list_instances": Call(MEMBER, {}),
    "destroy_instance": Call(MEMBER, {"instance_id": f"inst_{NOBODY}"}),
    "query_instance": Call(MEMBER, {"instance_id": f"inst_{NOBODY}", "prompt": "hi"}),
    "get_usage": Call(MEMBER, {}),
    "create_knowledge_base": Call(MEMBER, {"name": "matrix kb"}),
    "list_knowledge_bases": Call(MEMBER, {}),
    "delete_knowledge_base": Call(MEMBER, {"knowledge_base_id": f"kb_{NOBODY}"}),
    "add_documents": Call(
        MEMBER,
        {"knowledge_base_id": f"kb_{NOBODY}", "documents": [{"title": "t", "text": "x"}]},
    ),
    "list_documents": Call(MEMBER, {"knowledge_base_id": f"kb_{NOBODY}"}),
    "delete_document": Call(
        MEMBER, {"knowledge_base_id": f"kb_{NOBODY}", "document_id": f"doc_{NOBODY}"}
    ),
    "attach_knowledge_base": Call(
        MEMBER, {"instance_id": f"inst_{NOBODY}", "knowledge_base_id": f"kb_{NOBODY}"}
    ),
    "detach_knowledge_base": Call(
        MEMBER, {"instance_id": f"inst_{NOBODY}", "knowledge_base_id": f"kb_{NOBODY}"}
    ),
    "list_attachments": Call(MEMBER, {"instance_id": f"inst_{NOBODY}"}),
    "search_knowledge_base": Call(MEMBER, {"knowledge_base_id": f"kb_{NOBODY}", "query": "q"}),
    "get_balance": Call(MEMBER, {}),
    "get_conversation": Call(MEMBER, {"conversation_id": f"conv_{NOBODY}"}),
    "list_conversations": Call(MEMBER, {"instance_id": f"inst_{NOBODY}"}),
    "delete_conversation": Call(MEMBER, {"conversation_id": f"conv_{NOBODY}"}),
    "list_members": Call(MEMBER, {}),
    "set_spending_cap": Call(ADMIN, {"scope": "monthly", "amount_usd": None}),
    "buy_credits": Call(ADMIN, {"amount_usd": 10}),
}


def _app_routes(tmp: Any) -> set[tuple[str, str]]:
    app = create_app(Settings(data_dir=tmp), background=False)
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, Mount):
            found.add(("*", route.path))
        elif isinstance(route, Route):
            methods = (route.methods or {"*"}) - {"HEAD"}
            found |= {(m, route.path) for m in methods}
    return found


def test_every_route_and_tool_is_in_the_matrix(tmp_path: Any) -> None:
    routes = _app_routes(tmp_path)
    declared = set(REST) | set(NOT_KEYED)
    undeclared = sorted(r for r in routes - declared if not r[1].startswith(PAGE_PREFIXES))
    assert undeclared == [], f"add these routes to the permission matrix: {undeclared}"
    assert declared - routes == set(), (
        f"routes in the matrix but not in the app: {declared - routes}"
    )
    server = build_server(Runtime.build(Settings(data_dir=tmp_path)), _no_caller)
    tools = {t.name for t in server._tool_manager.list_tools()}
    assert tools - set(MCP_TOOLS) == set(), (
        f"add these tools to the matrix: {tools - set(MCP_TOOLS)}"
    )
    assert set(MCP_TOOLS) - tools == set()


async def _no_caller(_ctx: Any) -> Any:
    raise AssertionError("not called")


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuxenServer]:
    root = tmp_path_factory.mktemp("permissions")
    srv = AuxenServer(root / "data", database_url).start()
    try:
        yield srv
    finally:
        srv.stop_clean()


@pytest.fixture(scope="module")
def keys(server: AuxenServer) -> dict[Role, str]:
    """An owner's, an admin's and a member's account key of one workspace."""
    owner = server.init_workspace("matrix-owner@example.com")
    made = {OWNER: owner}
    with server.client(owner) as http:
        for role in (ADMIN, MEMBER):
            reply = http.post("/v1/keys", json={"name": role.value, "role": role.value})
            assert reply.status_code == 201, reply.text
            assert reply.json()["role"] == role.value
            made[role] = reply.json()["key"]
    return made


def _path(template: str) -> str:
    ids = {
        "{id}": f"inst_{NOBODY}" if "/instances/" in template else NOBODY,
        "{instance_id}": f"inst_{NOBODY}",
        "{kb_id}": f"kb_{NOBODY}",
        "{doc_id}": f"doc_{NOBODY}",
        "{user_id}": f"usr_{NOBODY}",
    }
    for name, value in ids.items():
        template = template.replace(name, value)
    return template


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
def test_rest_matrix(server: AuxenServer, keys: dict[Role, str], role: Role) -> None:
    wrong: list[str] = []
    with server.client(keys[role]) as http:
        for (method, template), call in REST.items():
            reply = http.request(method, _path(template), json=call.body, params=call.params)
            allowed = RANK[role] >= RANK[call.least]
            code = (reply.json().get("error") or {}).get("code") if reply.content else None
            if allowed and reply.status_code in (401, 403):
                wrong.append(f"{method} {template}: {role} refused: {reply.text[:200]}")
            if not allowed and (reply.status_code != 403 or code != "permission_denied"):
                wrong.append(f"{method} {template}: {role} not refused: {reply.status_code}")
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
async def test_mcp_matrix(server: AuxenServer, keys: dict[Role, str], role: Role) -> None:
    wrong: list[str] = []
    async with http_client(server.url, keys[role]) as client:
        listed = {t.name for t in (await client.list_tools()).tools}
        assert listed == set(MCP_TOOLS)
        for name, call in MCP_TOOLS.items():
            result = await client.call_tool(name, call.body or {})
            text = result.content[0].text if result.is_error else ""  # type: ignore[union-attr]
            denied = result.is_error and text.startswith("permission_denied")
            if text.startswith("invalid_argument [argument: ") and "unknown argument" in text:
                wrong.append(f"{name}: the matrix's arguments are wrong: {text}")
            allowed = RANK[role] >= RANK[call.least]
            if allowed == denied:
                wrong.append(f"{name} as {role}: {'refused' if denied else 'allowed'}: {text}")
    assert wrong == [], "\n".join(wrong)


def test_keys_carry_no_more_than_their_role(server: AuxenServer, keys: dict[Role, str]) -> None:
    with server.client(keys[ADMIN]) as admin, server.client(keys[MEMBER]) as member:
        above = admin.post("/v1/keys", json={"name": "too much", "role": "owner"})
        assert above.status_code == 403 and above.json()["error"]["param"] == "role"
        # Made by an admin without a role: the admin's own.
        plain = admin.post("/v1/keys", json={"name": "plain"})
        assert plain.status_code == 201 and plain.json()["role"] == "admin"
        # A member cannot revoke an account key, even knowing its id; an admin can.
        refused = member.delete(f"/v1/keys/{plain.json()['id']}")
        assert refused.status_code == 403, refused.text
        assert admin.delete(f"/v1/keys/{plain.json()['id']}").status_code == 200
        listed = admin.get("/v1/keys").json()["data"]
        assert {k["role"] for k in listed} >= {"owner", "admin", "member"}
