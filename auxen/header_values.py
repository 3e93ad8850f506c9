"""Request header values as HTTP defines them, whatever server runs the app.

RFC 9110 section 5.5: optional whitespace (spaces, tabs) before and after a field value
is not part of the value. uvicorn's httptools parser keeps trailing whitespace, so
without this `Mcp-Name: provision_instance ` would not equal the tool it names, and
every header comparison in the app (MCP routing headers, bearer tokens, Origin) would
depend on how the client spaced its lines. Trimmed once, at the edge, for every route.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

OWS = b" \t"


class TrimHeaderValues:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            if any(v[:1] in (b" ", b"\t") or v[-1:] in (b" ", b"\t") for _, v in headers):
                scope = {**scope, "headers": [(n, v.strip(OWS)) for n, v in headers]}
        await self.app(scope, receive, send)
