"""get_balance, set_spending_cap, buy_credits."""

from decimal import Decimal
from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from auxen.mcp_server.args import InstanceId
from auxen.mcp_server.server import READ_ONLY, ToolEnv
from auxen.mcp_server.server import scope as needs_scope
from auxen.store.models import CapScope
from auxen.tools import billing, payments
from auxen.tools.billing import BalanceView, CapRequest

Scope = Annotated[
    CapScope,
    Field(
        description="instance: one instance's total spend; monthly: the workspace per "
        "calendar month (UTC); max_burn: dollars per hour of all running instances "
        "together; client_monthly: one agent (OAuth client) per calendar month"
    ),
]
AmountUsd = Annotated[
    float | None,
    Field(
        description="The cap in dollars (dollars per hour for max_burn), e.g. 25 or 2.5; "
        "null removes the cap",
        ge=0,
        le=1_000_000,
        strict=True,
    ),
]
ClientId = Annotated[
    str | None,
    Field(
        description="For client_monthly: the OAuth client id of the agent",
        min_length=1,
        max_length=2000,
        strict=True,
    ),
]
CreditsUsd = Annotated[
    int,
    Field(description="Whole dollars of credits to buy (5 to 10000)", ge=5, le=10_000, strict=True),
]
# Setting a cap to the same value twice is the same as once; it never destroys anything.
SETS = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
# Opens a payment page at Stripe: another system, hence open-world.
PAYS = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
)


class CheckoutResult(BaseModel):
    checkout_url: str = Field(description="Give this URL to a person: they pay there")
    amount_usd: int
    livemode: bool


def tools(env: ToolEnv) -> list[Tool]:
    async def get_balance(ctx: Context[Any, Any]) -> BalanceView:
        return await env.call(ctx, billing.get_balance)

    async def set_spending_cap(
        ctx: Context[Any, Any],
        scope: Scope,
        amount_usd: AmountUsd,
        instance_id: InstanceId | None = None,
        client_id: ClientId = None,
    ) -> BalanceView:
        req = env.parse(
            CapRequest,
            {
                "scope": scope,
                "amount_usd": None if amount_usd is None else Decimal(str(amount_usd)),
                "instance_id": instance_id,
                "client_id": client_id,
            },
            keep_null=("amount_usd",),
        )
        return await env.call(ctx, billing.set_spending_cap, req)

    async def buy_credits(ctx: Context[Any, Any], amount_usd: CreditsUsd) -> CheckoutResult:
        made = await env.call(ctx, payments.start_checkout, amount_usd)
        return CheckoutResult(checkout_url=made.url, amount_usd=amount_usd, livemode=made.livemode)

    return [
        Tool.from_function(
            get_balance,
            meta=needs_scope("billing"),
            title="Get balance, caps and alerts",
            description="Credits available (balance minus what running work has "
            "reserved), spend this month, the burn rate of running instances, every "
            "spending cap with what is used against it, and recent alerts (such as an "
            "instance stopped because a cap was reached).",
            annotations=READ_ONLY,
        ),
        Tool.from_function(
            set_spending_cap,
            meta=needs_scope("billing"),
            title="Set a spending cap",
            description="Set or remove (amount_usd: null) a cap. Work that would cross "
            "a cap is refused before it starts, and an instance that would cross one is "
            "destroyed before its paid time runs out, so spend never passes the cap. "
            "Only the workspace owner may change caps.",
            annotations=SETS,
        ),
        Tool.from_function(
            buy_credits,
            meta=needs_scope("billing"),
            title="Buy credits",
            description="Start a Stripe Checkout for credits and return its URL for a "
            "person to pay at; the credits land when Stripe confirms the payment.",
            annotations=PAYS,
        ),
    ]
