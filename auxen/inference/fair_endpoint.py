"""An OpenAI-compatible inference endpoint admitted by `Fairness` for its whole response:
a stream holds its caller's slot until its last event, and every answer carries the
`x-ratelimit-*` headers. A request without a valid key passes straight to the endpoint,
which answers it 401 itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response
from starlette.types import Message, Receive, Scope, Send

from auxen.httputil import bearer, openai_error
from auxen.inference.fairness import InferenceRateLimited
from auxen.runtime import Runtime
from auxen.tools.errors import AuxenError


class FairEndpoint:
    def __init__(self, rt: Runtime, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.rt = rt
        self.app = request_response(endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            caller = await self.rt.auth.authenticate(bearer(Request(scope)))
        except AuxenError:
            await self.app(scope, receive, send)
            return
        try:
            async with self.rt.fairness.admit(caller) as headers:
                await self.app(scope, receive, _with_headers(send, headers))
        except InferenceRateLimited as exc:
            refused = openai_error(
                429, exc.message, type_="rate_limit_error", code="rate_limit_exceeded"
            )
            refused.headers.update(exc.headers)
            await refused(scope, receive, send)


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    raw = [(name.encode(), value.encode()) for name, value in headers.items()]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *raw]}
        await send(message)

    return sending
