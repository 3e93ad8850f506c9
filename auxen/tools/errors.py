"""Typed errors every operation raises; adapters turn them into HTTP statuses or MCP
tool errors. Each message says what went wrong and what to do next."""

from __future__ import annotations


class AuxenError(Exception):
    code = "error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidArgument(AuxenError):
    code = "invalid_argument"


class Unauthenticated(AuxenError):
    code = "unauthenticated"


class PermissionDenied(AuxenError):
    code = "permission_denied"


class NotFound(AuxenError):
    code = "not_found"


class Conflict(AuxenError):
    """The request is valid but the object's state does not allow it now."""

    code = "conflict"


class Unavailable(AuxenError):
    """A dependency (the upstream vLLM server, a provider) is failing."""

    code = "unavailable"


class TooLarge(AuxenError):
    code = "too_large"
