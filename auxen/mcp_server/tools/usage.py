"""get_usage: tokens, GPU time and cost so far."""

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from pydantic import Field

from auxen.mcp_server.args import InstanceId
from auxen.mcp_server.server import READ_ONLY, ToolEnv, scope
from auxen.tools import usage
from auxen.tools.views import UsageSummary

Since = Annotated[
    str | None,
    Field(
        description="Only usage from this time on (ISO 8601 with zone, e.g. "
        "2026-11-01T00:00:00Z); omit for all time",
        min_length=1,
        max_length=64,
        strict=True,
    ),
]


def tools(env: ToolEnv) -> list[Tool]:
    async def get_usage(
        ctx: Context[Any, Any], instance_id: InstanceId | None = None, since: Since = None
    ) -> UsageSummary:
        async def run(rt: Any, caller: Any) -> UsageSummary:
            start = usage.parse_since(since) if since else None
            return await usage.get_usage(rt, caller, instance_id=instance_id, since=start)

        return await env.call(ctx, run)

    return [
        Tool.from_function(
            get_usage,
            meta=scope("instances:read"),
            title="Get usage and cost",
            description="Requests, tokens, GPU seconds and cost so far, in total and per "
            "instance; optionally for one instance or since a time.",
            annotations=READ_ONLY,
        )
    ]
