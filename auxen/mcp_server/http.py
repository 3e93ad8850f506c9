"""Streamable HTTP at `/mcp`, in the same app as REST.

Each request passes three gates in this order: Host/Origin (DNS-rebinding protection,
always on, for loopback and the configured public host names), then the caller's
bearer key, then the SDK's transport, which serves both the 2025-11-25 session
handshake and stateless 2026-07-28 requests. A session is bound to the principal that
opened it: an API key, or for OAuth the (client, person, workspace) a grant is for, so a
token that replaces another for the same grant (a refresh, or a step-up to more scopes
the person consented to) keeps using the session, and nothing else can. The credential
is checked again on every request, so revoking it ends access at once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from auxen.auth.authenticate import with_origin
from auxen.auth.oauth import ACCESS_PREFIX, DEFAULT_SCOPES, resource_url
from auxen.auth.oauth.provider import OAuthProvider
from auxen.config import Settings
from auxen.httputil import bearer
from auxen.jsonparse import parse_json
from auxen.mcp_server.resumable import ResumableSessions
from auxen.mcp_server.server import AuxenMCP, build_server
from auxen.mcp_server.session_quota import SessionQuota
from auxen.runtime import Runtime
from auxen.tools.context import Caller
from auxen.tools.errors import InvalidArgument, Unauthenticated
from auxen.tools.members import membership_role

CALLER_KEY = "auxen.caller"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
SESSION_IDLE_S = 900.0  # a session unused this long is closed; its id then answers 404
MAX_SESSIONS = 10_000
MAX_SESSIONS_PER_KEY = 32  # one key cannot crowd every other workspace out


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """Hosts and origins the endpoint answers: loopback, the public URL's, and any
    configured with AUXEN_ALLOWED_HOSTS / AUXEN_ALLOWED_ORIGINS."""
    hosts = [h for name in LOOPBACK_HOSTS for h in (name, f"{name}:*")]
    origins = [o for name in LOOPBACK_HOSTS for o in (f"http://{name}", f"http://{name}:*")]
    if settings.public_url:
        public = urlsplit(settings.public_url)
        hosts.append(public.netloc)
        origins.append(f"{public.scheme}://{public.netloc}")
    hosts += [h.strip() for h in settings.allowed_hosts.split(",") if h.strip()]
    origins += [o.strip().rstrip("/") for o in settings.allowed_origins.split(",") if o.strip()]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


class McpEndpoint:
    """The ASGI app mounted at /mcp."""

    def __init__(self, rt: Runtime, oauth: OAuthProvider) -> None:
        self.rt = rt
        self.oauth = oauth
        self.resource = resource_url(rt.settings.base_url)
        self.resource_metadata = f"{rt.settings.base_url}/.well-known/oauth-protected-resource/mcp"
        security = transport_security(rt.settings)
        self.origin_check = TransportSecurityMiddleware(security)
        self.server: AuxenMCP = build_server(rt, self.caller_of)
        self.server.streamable_http_app(transport_security=security)
        self.sessions = ResumableSessions(
            self.server.session_manager.app,
            security_settings=security,
            max_request_body_size=rt.settings.max_body_bytes + 65_536,
            session_idle_timeout=SESSION_IDLE_S,
            max_sessions=MAX_SESSIONS,
        )
        self.tool_scopes = self.server.tool_scopes
        self.quota = SessionQuota(MAX_SESSIONS_PER_KEY, SESSION_IDLE_S, self._close_session)

    async def caller_of(self, ctx: Context[Any, Any]) -> Caller:
        """The caller of one tool call (or one poll of a long wait): the request's key,
        verified again, so a key revoked mid-wait stops working."""
        request = ctx.request_context.request
        if not isinstance(request, Request) or not isinstance(
            request.scope.get(CALLER_KEY), Caller
        ):
            raise Unauthenticated("this request carries no authenticated caller")
        return with_origin(await self.authenticate(bearer(request)), request)

    async def authenticate(self, token: str | None) -> Caller:
        """An OAuth access token issued for this resource, or an API key."""
        if token is None or not token.startswith(ACCESS_PREFIX):
            return await self.rt.auth.authenticate(token)
        grant = await self.oauth.load_access_token(token)
        if grant is None:
            raise Unauthenticated("the access token is invalid, expired or revoked")
        if (grant.resource or "").rstrip("/") != self.resource:
            raise Unauthenticated(f"the access token was not issued for {self.resource}")
        # The person's role now, not when they consented: a demotion or a removal
        # applies to their agents at once.
        role = await membership_role(self.rt.db, grant.workspace_id, grant.user_id)
        if role is None:
            raise Unauthenticated("the person this token acts for is no longer in its workspace")
        return Caller(
            workspace_id=grant.workspace_id,
            livemode=True,
            key_id=f"oauth:{grant.family_id}",
            scopes=frozenset(grant.scopes),
            client_id=grant.client_id,
            user_id=grant.user_id,
            role=role,
        )

    async def _close_session(self, session_id: str) -> None:
        """End one session as its idle timeout would: its id answers 404 from now on."""
        # The SDK has no public call to end a session from the server side.
        transport = self.sessions._server_instances.get(session_id)
        if transport is not None:
            await self.sessions._discard_session(session_id, transport)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.sessions.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        # Origin first: a page on another site must get 403 whether or not it has a key.
        refused = await self.origin_check.validate_request(request, is_post=False)
        if refused is not None:
            await refused(scope, receive, send)
            return
        token = bearer(request)
        try:
            caller = await self.authenticate(token)
        except Unauthenticated as exc:
            challenge = self._challenge(error="invalid_token" if token else None)
            await _unauthorized(exc.message, challenge, token_sent=token is not None)(
                scope, receive, send
            )
            return
        if request.method == "POST":
            try:
                receive, needed = await self._tool_scope(request, receive)
            except InvalidArgument as exc:
                await _invalid_request(exc)(scope, receive, send)
                return
            if caller.scopes is not None and needed is not None and needed not in caller.scopes:
                await _insufficient_scope(needed, self._challenge("insufficient_scope", needed))(
                    scope, receive, send
                )
                return
        scope[CALLER_KEY] = caller
        key_id = session_owner(caller)
        session_id = request.headers.get("mcp-session-id")
        mine = session_id is not None and self.quota.owner_of(session_id) == key_id
        # Identity the SDK binds each session to (never the key or token itself).
        scope["user"] = AuthenticatedUser(
            AccessToken(token=key_id, client_id=key_id, scopes=[], subject=caller.workspace_id)
        )
        if session_id is None and request.method == "POST" and _may_open_session(request):
            if not await self.quota.admit(key_id):
                await _too_many_sessions()(scope, receive, send)
                return
            try:
                await self.sessions.handle_request(
                    scope, receive, self._recording_new_session(send, key_id)
                )
            finally:
                self.quota.admitted(key_id)
            return
        if session_id is None or not mine:
            await self.sessions.handle_request(scope, receive, send)
            return
        async with self.quota.in_use(session_id):
            await self.sessions.handle_request(scope, receive, send)
        if request.method == "DELETE":
            self.quota.closed(session_id)

    def _challenge(self, error: str | None = None, scope: str | None = None) -> str:
        """RFC 6750 / RFC 9728 challenge: where the metadata is, which scopes to ask for."""
        parts = [f'resource_metadata="{self.resource_metadata}"']
        parts.append(f'scope="{scope or " ".join(DEFAULT_SCOPES)}"')
        if error:
            parts.append(f'error="{error}"')
        return "Bearer " + ", ".join(parts)

    async def _tool_scope(self, request: Request, receive: Receive) -> tuple[Receive, str | None]:
        """The scope a `tools/call` POST needs, read before the SDK sees the request; the
        body is handed on unchanged. Every POST body passes the one JSON parser first
        (`auxen.jsonparse`: nesting depth, NUL characters), InvalidArgument if not."""
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > self.rt.settings.max_body_bytes + 65_536 or not message.get("more_body"):
                break
        needed: str | None = None
        try:
            payload = parse_json(body)
        except InvalidArgument as exc:
            if exc.param is None:
                payload = None  # not JSON: the SDK answers its own parse error
            else:
                raise
        calls = payload if isinstance(payload, list) else [payload]
        for call in calls:
            if isinstance(call, dict) and call.get("method") == "tools/call":
                params = call.get("params")
                name = params.get("name") if isinstance(params, dict) else None
                needed = self.tool_scopes.get(str(name)) or needed
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return replay, needed

    def _recording_new_session(self, send: Send, key_id: str) -> Send:
        async def recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                for name, value in message.get("headers", []):
                    if name.lower() == b"mcp-session-id":
                        self.quota.opened(value.decode(), key_id)
            await send(message)

        return recording


def session_owner(caller: Caller) -> str:
    """The principal an MCP session belongs to. An API key is its own principal. An OAuth
    grant's is its client, person and workspace, not the token family: a step-up to more
    scopes issues a new family for the same grant (and revokes the old one), and the open
    session must carry on with it, while another client, another person or the same
    person's grant to another workspace still cannot use the session."""
    if caller.client_id is not None and caller.user_id is not None:
        return f"oauth:{caller.client_id}:{caller.user_id}:{caller.workspace_id}"
    return f"key:{caller.key_id}"


def _may_open_session(request: Request) -> bool:
    """Only the 2025 handshake opens sessions; 2026-07-28 requests stand alone."""
    version = request.headers.get("mcp-protocol-version")
    return version is None or version in HANDSHAKE_PROTOCOL_VERSIONS


def _too_many_sessions() -> Response:
    return Response(
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": None,
                "error": {
                    "code": -32000,
                    "message": f"this key already has {MAX_SESSIONS_PER_KEY} MCP sessions "
                    "with a request in progress; wait for one to finish or end one "
                    "(HTTP DELETE)",
                },
            }
        ),
        status_code=429,
        media_type="application/json",
        headers={"Retry-After": "5"},
    )


def _invalid_request(error: InvalidArgument) -> Response:
    """JSON-RPC's Invalid Request, naming the field, for a body no tool may receive."""
    return Response(
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": None,
                "error": {
                    "code": -32600,
                    "message": error.message,
                    "data": {"param": error.param},
                },
            }
        ),
        status_code=400,
        media_type="application/json",
    )


def _insufficient_scope(needed: str, challenge: str) -> Response:
    return Response(
        json.dumps(
            {
                "error": "insufficient_scope",
                "error_description": f"this tool needs the {needed!r} scope; "
                "authorize again asking for it",
                "scope": needed,
            }
        ),
        status_code=403,
        media_type="application/json",
        headers={"WWW-Authenticate": challenge},
    )


def _unauthorized(message: str, challenge: str, *, token_sent: bool) -> Response:
    # RFC 6750 section 3.1: no error code when the request carried no credentials.
    body = {
        "error": "invalid_token" if token_sent else "unauthorized",
        "error_description": message,
    }
    return Response(
        json.dumps(body),
        status_code=401,
        media_type="application/json",
        headers={"WWW-Authenticate": challenge},
    )
