"""Typed errors every operation raises; adapters turn them into HTTP statuses or MCP
tool errors. Each message says what went wrong and what to do next."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


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


class OverBudget(AuxenError):
    """The balance or a spending cap cannot cover what this would cost; `limit` names
    which (balance, instance, monthly, client_monthly, max_burn)."""

    code = "budget_exceeded"

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message, param=limit)
        self.limit = limit


class RateLimited(AuxenError):
    """Too many attempts: come back after `retry_after_s` seconds."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def parse_model(model: type[M], data: dict[str, Any]) -> M:
    """Validate `data` into `model`; the first problem becomes an InvalidArgument that
    names the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            message = f"unknown field {param!r}"
        elif first["type"] == "missing":
            message = f"missing required field {param!r}"
        elif param is None:  # a rule across fields, worded by the model itself
            message = str(first["msg"]).removeprefix("Value error, ")
        else:
            message = f"invalid {param}: {first['msg']}"
        raise InvalidArgument(message, param=param) from exc
