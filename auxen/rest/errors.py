"""Every error leaves as JSON in the OpenAI shape: {"error": {message, type, param, code}}.
Never an HTML page or a traceback."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from auxen.httputil import openai_error
from auxen.tools.errors import (
    AuxenError,
    Conflict,
    InvalidArgument,
    NotFound,
    OverBudget,
    PermissionDenied,
    RateLimited,
    TooLarge,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

_STATUS: dict[type[AuxenError], tuple[int, str]] = {
    InvalidArgument: (400, "invalid_request_error"),
    Unauthenticated: (401, "authentication_error"),
    PermissionDenied: (403, "permission_error"),
    OverBudget: (402, "insufficient_quota"),
    NotFound: (404, "not_found_error"),
    Conflict: (409, "conflict_error"),
    TooLarge: (413, "invalid_request_error"),
    RateLimited: (429, "rate_limit_error"),
    Unavailable: (502, "api_error"),
}


def status_of(error: AuxenError) -> tuple[int, str]:
    for cls in type(error).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500, "api_error"


async def auxen_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuxenError)
    status, type_ = status_of(exc)
    response = openai_error(status, exc.message, type_=type_, param=exc.param, code=exc.code)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="auxen"'
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after_s)
        response.headers.update(getattr(exc, "headers", {}))
    return response


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "no such endpoint", 405: "method not allowed on this endpoint"}
    return openai_error(
        exc.status_code,
        messages.get(exc.status_code, str(exc.detail)),
        type_="invalid_request_error" if exc.status_code < 500 else "api_error",
        code=str(exc.status_code),
    )


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        {
            "error": {
                "message": "internal error",
                "type": "api_error",
                "param": None,
                "code": "internal",
            }
        },
        status_code=500,
    )
