"""provision_instance, get_instance, list_instances, destroy_instance."""

import time
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from auxen.mcp_server.args import GpuType, InstanceId, Model, Tier, provision_request, ttl_hours
from auxen.mcp_server.server import ACTS, READ_ONLY, ToolEnv, scope
from auxen.store.models import Instance, InstanceState
from auxen.tools import instances
from auxen.tools.instances import ProvisionRequest
from auxen.tools.views import InstanceView

POLL_INTERVAL_S = 1.0
HEARTBEAT_S = 5.0  # progress at least this often while waiting, even without a change


class ProvisionResult(BaseModel):
    instance: InstanceView
    instance_key: str | None = Field(
        description="auxk_ key for this instance's OpenAI-compatible endpoint (the "
        "instance's `endpoint`); shown once, store it now. An idempotent retry gets the "
        "same key again; null once that key was revoked."
    )
    idempotent_replay: bool = Field(description="True when idempotency_key matched earlier")
    waited_seconds: float | None = Field(description="How long wait=true waited; else null")


class InstanceList(BaseModel):
    instances: list[InstanceView]


IdempotencyKey = Annotated[
    str | None,
    Field(
        description="Any unique string; retrying with the same key returns the same "
        "instance instead of creating (and paying for) a second one",
        min_length=1,
        max_length=200,
        strict=True,
    ),
]
Wait = Annotated[
    bool,
    Field(
        description="Wait until the instance is ready or failed, reporting progress "
        "(state and elapsed time). Typically 1-5 minutes. If the call is cancelled the "
        "instance keeps starting; check it with get_instance.",
        strict=True,
    ),
]
GpuFallbacks = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=64)]] | None,
    Field(
        description="GPU types to try in order when gpu_type has no capacity at the "
        "provider (e.g. ['A100-80GB', 'H100-80GB']); billed at the dearest until one is got",
        max_length=5,
    ),
]
IdleMinutes = Annotated[
    float | None,
    Field(
        description="Destroy it after this many minutes without a query (default: the "
        "server's, usually 60)",
        gt=0,
        le=7 * 24 * 60,
        strict=True,
    ),
]
SpendCapUsd = Annotated[
    float | None,
    Field(
        description="The most this instance may ever cost, in dollars; it is destroyed "
        "before its spend would pass this",
        ge=0,
        le=1_000_000,
        strict=True,
    ),
]
History = Annotated[
    bool,
    Field(
        description="Keep conversations on the server (sealed, bounded, deleted with the "
        "instance): query_instance then returns a conversation_id to continue with. Off "
        "by default, when nothing of a conversation is stored",
        strict=True,
    ),
]
StateFilter = Annotated[InstanceState | None, Field(description="Only instances in this state")]
Limit = Annotated[
    int, Field(description="At most this many, newest first", ge=1, le=100, strict=True)
]


def tools(env: ToolEnv) -> list[Tool]:
    settings = env.rt.settings
    TtlHours = ttl_hours(settings)
    default_ttl = settings.default_ttl_seconds / 3600

    async def provision_instance(
        ctx: Context[Any, Any],
        model: Model,
        gpu_type: GpuType = None,
        tier: Tier = "dedicated",
        ttl_hours: TtlHours = default_ttl,  # type: ignore[valid-type]
        idempotency_key: IdempotencyKey = None,
        wait: Wait = False,
        idle_timeout_minutes: IdleMinutes = None,
        spend_cap_usd: SpendCapUsd = None,
        gpu_fallbacks: GpuFallbacks = None,
        history: History = False,
    ) -> ProvisionResult:
        req = env.parse(
            ProvisionRequest,
            provision_request(
                model, gpu_type, tier, ttl_hours, idempotency_key, idle_timeout_minutes,
                spend_cap_usd, gpu_fallbacks, history,
            ),
        )  # fmt: skip
        made = await env.call(ctx, instances.provision_instance, req)
        instance = made.instance
        waited: float | None = None
        if wait and not instance.state.is_terminal:
            started = time.monotonic()
            instance = await _wait_ready(env, ctx, instance.id, started)
            waited = round(time.monotonic() - started, 1)
            if instance.state is not InstanceState.READY and instance.state.is_terminal:
                raise ToolError(
                    f"failed: instance {instance.id} is {instance.state.value} after "
                    f"{waited:.0f} s ({instance.last_error or instance.destroy_reason}); "
                    "nothing is left running. Try another model or gpu_type, or "
                    "provision again."
                )
        return ProvisionResult(
            instance=env.instance(instance),
            instance_key=made.instance_key,
            idempotent_replay=made.replayed,
            waited_seconds=waited,
        )

    async def get_instance(ctx: Context[Any, Any], instance_id: InstanceId) -> InstanceView:
        return env.instance(await env.call(ctx, instances.get_instance, instance_id))

    async def list_instances(
        ctx: Context[Any, Any], state: StateFilter = None, limit: Limit = 20
    ) -> InstanceList:
        rows = await env.call(ctx, instances.list_instances, state=state, limit=limit)
        return InstanceList(instances=[env.instance(i) for i in rows])

    async def destroy_instance(ctx: Context[Any, Any], instance_id: InstanceId) -> InstanceView:
        return env.instance(await env.call(ctx, instances.destroy_instance, instance_id))

    return [
        Tool.from_function(
            provision_instance,
            meta=scope("instances:write"),
            title="Provision an instance",
            description="Start a dedicated instance serving `model` (one vLLM server, "
            "single-tenant). Billed per hour from now until destroy_instance or the TTL. "
            "Returns the instance and its auxk_ key (once). Without wait it returns at "
            "once in state provisioning; poll get_instance or pass wait=true. Use "
            "quote_instance first to see the price.",
            annotations=ACTS,
        ),
        Tool.from_function(
            get_instance,
            meta=scope("instances:read"),
            title="Get an instance",
            description="One instance's state, endpoint, price, expiry and last error.",
            annotations=READ_ONLY,
        ),
        Tool.from_function(
            list_instances,
            meta=scope("instances:read"),
            title="List instances",
            description="This workspace's instances, newest first, optionally by state.",
            annotations=READ_ONLY,
        ),
        Tool.from_function(
            destroy_instance,
            meta=scope("instances:write"),
            title="Destroy an instance",
            description="Stop the instance, stop its billing, and delete everything it "
            "held (weights cache, logs, keys). Cannot be undone. Destroying an instance "
            "that is already destroyed is harmless and returns it as it is.",
            annotations=ToolAnnotations(
                read_only_hint=False,
                destructive_hint=True,
                idempotent_hint=True,
                open_world_hint=False,
            ),
        ),
    ]


async def _wait_ready(
    env: ToolEnv, ctx: Context[Any, Any], instance_id: str, started: float
) -> Instance:
    """Poll until ready or terminal, reporting each state change and a heartbeat."""
    deadline = started + env.rt.provider.ready_timeout_s + 60
    last_state: InstanceState | None = None
    last_report = 0.0
    while True:
        instance = await env.call(ctx, instances.get_instance, instance_id)
        elapsed = time.monotonic() - started
        if instance.state is not last_state or elapsed - last_report >= HEARTBEAT_S:
            await ctx.report_progress(
                max(elapsed, last_report + 0.001),
                message=f"{instance.id} {instance.state.value} after {elapsed:.0f} s"
                + (f": {instance.status_detail}" if instance.status_detail else ""),
            )
            last_state, last_report = instance.state, max(elapsed, last_report + 0.001)
        if instance.state is InstanceState.READY or instance.state.is_terminal:
            return instance
        if time.monotonic() > deadline:
            return instance
        await anyio.sleep(POLL_INTERVAL_S)
