"""Small HTTP pieces shared by the REST API and the inference proxy: bearer tokens,
bounded JSON bodies and OpenAI-style error bodies.

A large body is parsed and checked on a worker thread, a few at a time, so one caller's
megabyte never holds the event loop that answers everyone else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse

from auxen.jsonparse import parse_json
from auxen.tools.errors import InvalidArgument, TooLarge

# Bodies up to this size are parsed on the event loop (well under a millisecond).
OFF_LOOP_BYTES = 64 * 1024
# Worker threads that parse and check large bodies at once; the rest wait their turn.
OFF_LOOP_THREADS = 2
_limiter: anyio.CapacityLimiter | None = None

BodyCheck = Callable[[dict[str, Any]], dict[str, Any]]


def openai_error(
    status: int, message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": param, "code": code}},
        status_code=status,
    )


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def read_json_body(
    request: Request, limit: int, *, check: BodyCheck | None = None, nul_ok: bool = False
) -> dict[str, Any]:
    """The body as a JSON object, at most `limit` bytes, passed through `check` (a
    synchronous validator that may rewrite it) off the event loop when it is large.
    NUL characters are refused (`auxen.jsonparse`) unless `nul_ok`: text that is never
    stored, such as a prompt, may carry them."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body is larger than {limit} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise TooLarge(f"request body is larger than {limit} bytes")
    if not raw.strip():
        raise InvalidArgument("request body is empty; send a JSON object")
    if len(raw) <= OFF_LOOP_BYTES:
        return _parse_object(bytes(raw), check, nul_ok)
    global _limiter
    if _limiter is None:
        _limiter = anyio.CapacityLimiter(OFF_LOOP_THREADS)
    return await anyio.to_thread.run_sync(
        _parse_object, bytes(raw), check, nul_ok, limiter=_limiter
    )


def _parse_object(raw: bytes, check: BodyCheck | None, nul_ok: bool = False) -> dict[str, Any]:
    body = parse_json(raw, nul_ok=nul_ok)
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    return body if check is None else check(body)
