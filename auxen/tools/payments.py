"""Buying credits: a Stripe Checkout for a person to pay at (see billing.stripe_payments)."""

from __future__ import annotations

from auxen.billing.stripe_payments import Checkout
from auxen.runtime import Runtime
from auxen.tools.billing import require_owner
from auxen.tools.context import Caller


async def start_checkout(rt: Runtime, caller: Caller, amount_usd: int) -> Checkout:
    caller.require_account()
    await require_owner(rt, caller, "buy credits")
    return await rt.payments.checkout(caller.workspace_id, caller.livemode, amount_usd)
