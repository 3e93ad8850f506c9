"""Buying credits: a Stripe Checkout for a person to pay at (see billing.stripe_payments)."""

from __future__ import annotations

from auxen.billing.stripe_payments import Checkout
from auxen.runtime import Runtime
from auxen.tools import audit
from auxen.tools.context import Caller
from auxen.tools.permissions import Permission


async def start_checkout(rt: Runtime, caller: Caller, amount_usd: int) -> Checkout:
    caller.require(Permission.BUY_CREDITS)
    caller.require_proven_email("buy credits")
    made = await rt.payments.checkout(caller.workspace_id, caller.livemode, amount_usd)
    await audit.record_for(
        rt, caller, "credits.checkout", target_type="workspace", target_id=caller.workspace_id,
        detail={"amount_usd": amount_usd, "livemode": caller.livemode},
    )  # fmt: skip
    return made
