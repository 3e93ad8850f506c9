"""The MCP server: `auxen.tools` operations exposed as MCP tools.

Each module in `auxen.mcp_server.tools` contributes its tools through a `tools(env)`
function; adding a family of tools (knowledge bases, billing) is one new module there.
This module holds what they share: who is calling, typed errors turned into tool
errors an agent can act on, and arguments checked strictly before anything runs.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.tools import Tool
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolResult,
    GetPromptResult,
    InputRequiredResult,
    ToolAnnotations,
)
from pydantic import ValidationError

from auxen import __version__
from auxen.runtime import Runtime
from auxen.store.models import Instance
from auxen.tools.context import Caller
from auxen.tools.errors import AuxenError, M, parse_model
from auxen.tools.views import InstanceView, instance_view

T = TypeVar("T")

CallerOf = Callable[[Context[Any, Any]], Awaitable[Caller]]

INSTRUCTIONS = """\
Auxen runs private LLM inference on dedicated instances (one vLLM server per instance,
single-tenant; prompts and answers are never stored).
Typical flow: list_models -> quote_instance -> provision_instance (wait=true reports
progress until ready) -> query_instance -> get_usage -> destroy_instance.
Instances cost money per hour until destroyed, their TTL ends or they sit idle; destroy
them when done. Work is paid from credits reserved before it starts: get_balance shows
what is available and the caps; a budget_exceeded error names the limit in the way.
Every error names the argument at fault and what to do next."""

SCOPE_META = "auxen/scope"


def scope(name: str) -> dict[str, str]:
    """A tool's `meta`: the OAuth scope a token needs to call it."""
    return {SCOPE_META: name}


READ_ONLY = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
# Changes something (an instance, its usage) without destroying anything; not idempotent.
ACTS = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)


@dataclass(frozen=True)
class ToolEnv:
    """What every tool module gets: the runtime and a way to learn who is calling."""

    rt: Runtime
    caller_of: CallerOf

    async def call(
        self, ctx: Context[Any, Any], op: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> T:
        """Run one operation as the calling principal; typed errors become tool errors."""
        try:
            caller = await self.caller_of(ctx)
            return await op(self.rt, caller, *args, **kwargs)
        except AuxenError as exc:
            raise ToolError(describe(exc)) from None

    def parse(self, model: type[M], data: dict[str, Any], keep_null: tuple[str, ...] = ()) -> M:
        """Validate a request model built from tool arguments; problems become tool errors.
        Omitted (null) arguments take the model's defaults, except those in `keep_null`,
        where null means something (removing a cap)."""
        try:
            return parse_model(
                model, {k: v for k, v in data.items() if v is not None or k in keep_null}
            )
        except AuxenError as exc:
            raise ToolError(describe(exc)) from None

    def instance(self, instance: Instance) -> InstanceView:
        return instance_view(instance, self.rt.settings.base_url)


def describe(exc: AuxenError) -> str:
    where = f" [argument: {exc.param}]" if exc.param else ""
    return f"{exc.code}{where}: {exc.message}"


class AuxenMCP(MCPServer[Any]):
    """MCPServer that refuses unknown arguments and words argument errors for an agent."""

    def __init__(self, tools: list[Tool]) -> None:
        for tool in tools:
            # Typos must not silently fall back to defaults (`ttl` for `ttl_hours`).
            tool.parameters["additionalProperties"] = False
        self._params = {t.name: set(t.parameters.get("properties", {})) for t in tools}
        # The OAuth scope each tool needs (`meta["auxen/scope"]`), checked before it runs.
        self.tool_scopes: dict[str, str] = {t.name: (t.meta or {})[SCOPE_META] for t in tools}
        # The SDK logs tool errors (which quote arguments) at INFO: keep its loggers to
        # warnings, whatever the host application configured.
        logging.getLogger("mcp").setLevel(logging.WARNING)
        super().__init__(
            name="auxen",
            title="Auxen",
            description="Private LLM inference on dedicated vLLM instances",
            instructions=INSTRUCTIONS,
            version=__version__,
            tools=tools,
            log_level="WARNING",
        )

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        known = self._params.get(name)
        if known is not None:
            unknown = sorted(set(arguments) - known)
            if unknown:
                bad = unknown[0][:64]  # a name is the caller's text too: keep it short
                raise ToolError(
                    f"invalid_argument [argument: {bad}]: unknown argument {bad!r}; "
                    f"{name} takes: {', '.join(sorted(known))}"
                )
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            raise
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, ValidationError):
                raise ToolError(_argument_error(cause)) from cause
            if cause is not None and isinstance(cause, ToolError):
                raise ToolError(str(cause)) from cause  # drop the SDK's "Error executing" prefix
            raise

    async def get_prompt(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        context: Context[Any, Any] | None = None,
    ) -> GetPromptResult | InputRequiredResult:
        # The SDK raises a bare ValueError for an unknown name, which the stateless
        # 2026-07-28 path turns into -32603 with a traceback in the log: a caller's
        # mistake is Invalid params (-32602) on every path.
        if self._prompt_manager.get_prompt(name) is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown prompt: {name[:64]}")
        return await super().get_prompt(name, arguments, context)


def _argument_error(error: ValidationError) -> str:
    """The first bad argument and why, without echoing the value back."""
    first = error.errors(include_input=False, include_url=False)[0]
    param = ".".join(str(p) for p in first["loc"])[:100] or "arguments"
    if first["type"] == "missing":
        why = f"{param} is required"
    elif first["type"] == "extra_forbidden":
        why = f"{param} is not an argument of this tool"
    else:
        why = f"invalid {param}: {first['msg']}"
    return f"invalid_argument [argument: {param}]: {why}"


def build_server(rt: Runtime, caller_of: CallerOf) -> AuxenMCP:
    from auxen.mcp_server import tools as toolsets

    env = ToolEnv(rt, caller_of)
    tools: list[Tool] = []
    for info in sorted(pkgutil.iter_modules(toolsets.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{toolsets.__name__}.{info.name}")
        tools.extend(module.tools(env))
    return AuxenMCP(tools)
