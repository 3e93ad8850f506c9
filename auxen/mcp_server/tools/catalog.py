"""list_models and quote_instance: what can be provisioned, and for how much."""

from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool

from auxen.mcp_server.args import GpuType, Model, Tier, provision_request, ttl_hours
from auxen.mcp_server.server import READ_ONLY, ToolEnv, scope
from auxen.tools import catalog
from auxen.tools.instances import ProvisionRequest


def tools(env: ToolEnv) -> list[Tool]:
    TtlHours = ttl_hours(env.rt.settings)
    default_ttl = env.rt.settings.default_ttl_seconds / 3600

    async def list_models(ctx: Context[Any, Any]) -> catalog.Catalog:
        return await env.call(ctx, catalog.list_models)

    async def quote_instance(
        ctx: Context[Any, Any],
        model: Model,
        gpu_type: GpuType = None,
        tier: Tier = "dedicated",
        ttl_hours: TtlHours = default_ttl,  # type: ignore[valid-type]
    ) -> catalog.Quote:
        req = env.parse(ProvisionRequest, provision_request(model, gpu_type, tier, ttl_hours, None))
        return await env.call(ctx, catalog.quote_instance, req)

    return [
        Tool.from_function(
            list_models,
            meta=scope("instances:read"),
            title="List models and GPU types",
            description="What can be provisioned on this server: models, GPU types with "
            "$/hour and rough time to ready, and tiers. Call this before quote_instance or "
            "provision_instance to pick valid arguments.",
            annotations=READ_ONLY,
        ),
        Tool.from_function(
            quote_instance,
            meta=scope("instances:read"),
            title="Quote an instance",
            description="The price of an instance before committing: $/hour, the most it "
            "can cost over its TTL, and rough time to ready. Checks the arguments exactly as "
            "provision_instance would; creates nothing.",
            annotations=READ_ONLY,
        ),
    ]
