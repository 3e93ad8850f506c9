"""Streamable HTTP at `/mcp`, in the same app as REST.

Each request passes three gates in this order: Host/Origin (DNS-rebinding protection,
always on, for loopback and the configured public host names), then the caller's
bearer key, then the SDK's transport, which serves both the 2025-11-25 session
handshake and stateless 2026-07-28 requests. A session is bound to the key that opened
it; the key is checked again on every request, so revoking it ends access at once.
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
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from auxen.config import Settings
from auxen.httputil import bearer
from auxen.mcp_server.server import AuxenMCP, build_server
from auxen.runtime import Runtime
from auxen.tools.context import Caller
from auxen.tools.errors import Unauthenticated

CALLER_KEY = "auxen.caller"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


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


async def caller_from_request(ctx: Context[Any, Any]) -> Caller:
    request = ctx.request_context.request
    caller = getattr(request, "scope", {}).get(CALLER_KEY)
    if not isinstance(caller, Caller):
        raise Unauthenticated("this request carries no authenticated caller")
    return caller


class McpEndpoint:
    """The ASGI app mounted at /mcp."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        security = transport_security(rt.settings)
        self.origin_check = TransportSecurityMiddleware(security)
        self.server: AuxenMCP = build_server(rt, caller_from_request)
        self.server.streamable_http_app(
            transport_security=security,
            max_request_body_size=rt.settings.max_body_bytes + 65_536,
        )
        self.sessions = self.server.session_manager

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
            caller = await self.rt.auth.authenticate(token)
        except Unauthenticated as exc:
            await _unauthorized(exc.message, token_sent=token is not None)(scope, receive, send)
            return
        scope[CALLER_KEY] = caller
        # Identity the SDK binds each session to (never the key itself).
        scope["user"] = AuthenticatedUser(
            AccessToken(
                token=f"key:{caller.key_id}",
                client_id=f"key:{caller.key_id}",
                scopes=[],
                subject=caller.workspace_id,
            )
        )
        await self.sessions.handle_request(scope, receive, send)


def _unauthorized(message: str, *, token_sent: bool) -> Response:
    # RFC 6750 section 3.1: no error code when the request carried no credentials.
    challenge = 'Bearer realm="auxen"' + (', error="invalid_token"' if token_sent else "")
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
