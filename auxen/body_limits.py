"""Every request body is bounded while it arrives, by one ASGI middleware.

Each route prefix has a limit (`BodyLimits.limits`, set where the app is assembled; the
first matching prefix wins, anything unmatched gets `default`). A declared
`Content-Length` over the limit is refused before a byte of the body is read; a chunked
body is counted as it is received and refused as soon as it passes the limit, whatever
the handler does with the error (the response becomes 413 unless one has already
started). Handlers keep their own, often tighter, checks of what they parse.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from auxen.tools.errors import TooLarge


class BodyTooLarge(TooLarge):
    """The body passed its route's limit while it was being received."""


class BodyLimits:
    def __init__(self, app: ASGIApp, limits: Sequence[tuple[str, int]], default: int) -> None:
        self.app = app
        self.limits = limits
        self.default = default

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.limits:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, limit)
            return
        received = 0
        exceeded = False
        started = False

        async def bounded_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge(_message(limit), param="body")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                if exceeded and not started:
                    # The handler turned the error into a response of its own.
                    started = True
                    await _refuse(send, limit)
                    return
                started = True
            elif exceeded and message["type"] == "http.response.body":
                return
            await send(message)

        try:
            await self.app(scope, bounded_receive, guarded_send)
        except BodyTooLarge:
            if started:
                raise
            started = True
            await _refuse(send, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


def _message(limit: int) -> str:
    return f"request body is larger than {limit} bytes, the limit of this endpoint"


async def _refuse(send: Send, limit: int) -> None:
    body = json.dumps(
        {
            "error": {
                "message": _message(limit),
                "type": "invalid_request_error",
                "param": "body",
                "code": "too_large",
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
