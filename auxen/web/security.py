"""The public security surface: headers on every response, `/.well-known/security.txt`
(RFC 9116) and the disclosure policy page it points to (`/security`, the same policy as
SECURITY.md at the repository root).

`SecurityHeaders` wraps the whole app (pages, REST, MCP, static files): no response
leaves without no-sniff, no-referrer, DENY framing and same-origin opener isolation.
Responses that set their own Content-Security-Policy (pages, whose policy allows this
site's stylesheet and form targets) keep it; every other response gets the strictest
one, which loads nothing and cannot be framed. HSTS is sent only on requests that came
over https: the ASGI scheme is https when uvicorn terminated TLS or when a trusted
proxy (AUXEN_FORWARDED_ALLOW_IPS) said X-Forwarded-Proto: https; or the public URL is
https (so the deployment is served over TLS by something in front). Over plain http a
browser ignores HSTS anyway, and sending it on a development server would pin
localhost to https.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from auxen.config import Settings
from auxen.web.pages import Pages

STRICT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HSTS = "max-age=63072000; includeSubDomains"
ALWAYS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
SECURITY_TXT_LIFETIME = timedelta(days=180)  # RFC 9116 advises less than a year


class SecurityHeaders:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.public_https = settings.base_url.startswith("https://")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = self.public_https or scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in ALWAYS if n not in present]
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", STRICT_CSP.encode()))
                if https and b"strict-transport-security" not in present:
                    headers.append((b"strict-transport-security", HSTS.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def security_contact(settings: Settings) -> str:
    if settings.security_contact:
        contact = settings.security_contact.strip()
        return contact if ":" in contact else f"mailto:{contact}"
    host = urlsplit(settings.base_url).hostname or "localhost"
    return f"mailto:security@{host}"


class SecuritySurface:
    def __init__(self, pages: Pages) -> None:
        self.pages = pages
        self.settings = pages.rt.settings

    async def security_txt(self, request: Request) -> Response:
        base = self.settings.base_url
        expires = (datetime.now(UTC) + SECURITY_TXT_LIFETIME).replace(microsecond=0)
        body = "\n".join(
            [
                f"Contact: {security_contact(self.settings)}",
                f"Expires: {expires.isoformat().replace('+00:00', 'Z')}",
                f"Canonical: {base}/.well-known/security.txt",
                f"Policy: {base}/security",
                "Preferred-Languages: en",
                "",
            ]
        )
        return PlainTextResponse(body, headers={"Cache-Control": "max-age=3600"})

    async def policy(self, request: Request) -> Response:
        return self.pages.render(
            request,
            "security.html",
            contact=security_contact(self.settings).removeprefix("mailto:"),
        )
