"""GPU time: every billable instance holds a reservation for its current window (one
tick, `AUXEN_BILLING_TICK_S`) from the moment it is provisioned, and the next window is
reserved while half the current one is still left. A window is charged when it ends, or
when the instance stops inside it (a started tick is billed). When the next window cannot
be reserved (the balance, the instance's cap, the monthly budget or the agent's budget),
the instance is destroyed while its paid window is still running: GPU time never runs
past what was reserved. The time a control plane was down is not billed.

The same pass settles per-token holds left open by a call whose process died: a stream
cut by the crash is charged, once, for the tokens its usage row recorded (its last
checkpoint; the reconciler marks it `interrupted`), and a call that recorded nothing is
released when its hold is stale. A caller never pays for tokens nobody counted, and the
operator never gives away tokens that were streamed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from auxen.billing.alerts import Alerts
from auxen.billing.catalog import DEFAULT_SHARED_SMALL, TokenPrices
from auxen.billing.ledger import BURNING_STATES, Ledger, Spend, month_start
from auxen.notify import Event, EventType, notify
from auxen.periodic import Periodic
from auxen.store.db import Database
from auxen.store.models import (
    CapScope,
    Instance,
    Reservation,
    SpendingCap,
    UsageRecord,
    as_utc,
)
from auxen.tools.errors import OverBudget
from auxen.tools.views import micros_to_usd

log = logging.getLogger(__name__)

GPU_TIME = "gpu_time"
TOKENS = "tokens"
# Instances burn GPU time from provisioning until they stop (the burn cap counts the same).
METERED_STATES = BURNING_STATES
# A reservation whose instance row never appeared (a crash between the two) is released
# after this long.
ORPHAN_GRACE = timedelta(seconds=120)
# A cap this much used is "nearly reached" (one warning per cap and period).
NEAR_FRACTION = 0.8

Destroy = Callable[[str, str], Awaitable[Any]]
# Tells an instance's own watchdog where its paid time ends (see Provider.keep_until).
KeepUntil = Callable[[Instance, datetime], Awaitable[Any]]


class GpuMeter:
    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        tick_s: float,
        destroy: Destroy,
        alerts: Alerts,
        stale_hold_s: float = 900.0,
        keep_until: KeepUntil | None = None,
        token_prices: TokenPrices = DEFAULT_SHARED_SMALL,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.window = timedelta(seconds=tick_s)
        self.stale_hold = timedelta(seconds=stale_hold_s)
        self.destroy = destroy
        self.alerts = alerts
        self.keep_until = keep_until
        interval = max(0.25, self.window.total_seconds() / 4)
        self._loop = Periodic("gpu meter", self.run_once, interval)
        self.token_prices = token_prices

    def window_cost(self, instance: Instance) -> int:
        """One window at the instance's own price (the dearest of its GPU candidates until
        the provider says which it got), rounded up to a whole micro-dollar."""
        return math.ceil(instance.hourly_price_micros * self.window.total_seconds() / 3600)

    def spend(self, instance: Instance) -> Spend:
        return Spend(
            instance.workspace_id, instance.livemode, instance.id, GPU_TIME, instance.client_id
        )

    async def reserve_first_window(self, instance: Instance) -> str | None:
        """At provisioning, before the instance exists: its first window, with the burn
        rate it adds checked against the workspace's cap. Raises OverBudget."""
        now = datetime.now(UTC)
        return await self.ledger.reserve(
            self.spend(instance),
            self.window_cost(instance),
            window=(now, now + self.window),
            adds_hourly_micros=instance.hourly_price_micros,
        )

    async def run_once(self) -> None:
        now = datetime.now(UTC)
        await self._settle_dead_calls(now)
        async with self.db.system() as session:
            windows = (
                await session.exec(
                    select(Reservation).where(
                        col(Reservation.open).is_(True),
                        col(Reservation.purpose) == GPU_TIME,
                        col(Reservation.window_end).is_not(None),
                    )
                )
            ).all()
            ids = {w.instance_id for w in windows}
            metered = (
                await session.exec(
                    select(Instance).where(
                        sa.or_(
                            col(Instance.id).in_(ids),
                            sa.and_(
                                col(Instance.state).in_(METERED_STATES),
                                col(Instance.hourly_price_micros) > 0,
                            ),
                        )
                    )
                )
            ).all()
            paid = dict(
                (
                    await session.exec(
                        select(Reservation.instance_id, sa.func.max(Reservation.window_end))
                        .where(col(Reservation.purpose) == GPU_TIME)
                        .where(col(Reservation.instance_id).in_([i.id for i in metered]))
                        .group_by(col(Reservation.instance_id))
                    )
                ).all()
            )
        instances = {i.id: i for i in metered}
        for window in windows:
            await self._settle_window(window, instances.get(window.instance_id), now)
        for instance in metered:
            if instance.state.value in METERED_STATES and instance.hourly_price_micros > 0:
                paid_until = paid.get(instance.id)
                until = await self._extend(
                    instance, as_utc(paid_until) if paid_until else None, now
                )
                if until is not None and self.keep_until is not None:
                    await self.keep_until(instance, until)

    async def _settle_dead_calls(self, now: datetime) -> None:
        """Per-token holds whose call died with its process: charged what its usage row
        recorded once that row is final (`interrupted`, or finished but not yet settled
        when the process died) and the hold stale or the stream marked dead; released
        when stale with no row. A stream still checkpointing is left to its process."""
        async with self.db.system() as session:
            rows = (
                await session.exec(
                    select(
                        Reservation.id,
                        UsageRecord.outcome,
                        UsageRecord.prompt_tokens,
                        UsageRecord.completion_tokens,
                    )
                    .join(
                        UsageRecord,
                        col(UsageRecord.reservation_id) == col(Reservation.id),
                        isouter=True,
                    )
                    .where(
                        col(Reservation.open).is_(True),
                        col(Reservation.purpose) == TOKENS,
                        sa.or_(
                            col(UsageRecord.outcome) == "interrupted",
                            col(Reservation.created_at) < now - self.stale_hold,
                        ),
                    )
                )
            ).all()
        for hold, outcome, prompt, completion in rows:
            if outcome == "streaming":
                continue
            cost = self.token_prices.cost(prompt, completion) if outcome is not None else 0
            await self.ledger.settle(hold, cost)

    async def _settle_window(
        self, window: Reservation, instance: Instance | None, now: datetime
    ) -> None:
        assert window.window_start is not None and window.window_end is not None
        start, end = as_utc(window.window_start), as_utc(window.window_end)
        if instance is None:
            if now - as_utc(window.created_at) > ORPHAN_GRACE:
                await self.ledger.settle(window.id, 0)
            return
        if instance.state.is_terminal:
            stopped = instance.stopped_at or instance.destroyed_at or now
            used = start < as_utc(stopped)  # a started window is billed in full
            await self.ledger.settle(window.id, window.amount_micros if used else 0)
        elif now >= end:
            await self.ledger.settle(window.id, window.amount_micros)

    async def _extend(
        self, instance: Instance, paid_until: datetime | None, now: datetime
    ) -> datetime | None:
        """Reserve the next window when under half of the current one is left; the end
        of the instance's paid time afterwards (None: it is being stopped)."""
        if paid_until is not None and paid_until - now > self.window / 2:
            return paid_until
        start = max(paid_until or now, now)  # downtime of the control plane is not billed
        try:
            reserved = await self.ledger.reserve(
                self.spend(instance),
                self.window_cost(instance),
                window=(start, start + self.window),
                unless_paid_beyond=now + self.window / 2,
            )
        except IntegrityError:
            return paid_until  # another server process reserved this window a moment ago
        except OverBudget as exc:
            await self._stop(instance, exc)
            return None
        await self._warn_if_near(instance, now)
        return start + self.window if reserved is not None else paid_until

    async def _warn_if_near(self, instance: Instance, now: datetime) -> None:
        """Tell the owners once when the balance has under an hour of the running
        instances left, or a cap on this instance or the month is 80% used."""
        ws, live = instance.workspace_id, instance.livemode
        warnings: list[tuple[str, dict[str, str], str]] = []  # limit, amounts, dedupe key
        balance = await self.ledger.balance(ws, live)
        burn = await self.ledger.burn_rate(ws, live)
        if burn and balance.available_micros < burn:
            amounts = {
                "available_usd": micros_to_usd(balance.available_micros),
                "burn_usd_per_hour": micros_to_usd(burn),
            }
            warnings.append(("balance", amounts, f"balance:{live}:{now:%Y-%m-%d}"))
        async with self.db.scoped(ws) as session:
            caps = (
                await session.exec(
                    select(SpendingCap).where(
                        col(SpendingCap.livemode) == live,
                        col(SpendingCap.scope).in_([CapScope.INSTANCE, CapScope.MONTHLY]),
                    )
                )
            ).all()
        for cap in caps:
            if cap.scope == CapScope.INSTANCE and cap.subject == instance.id:
                used = await self.ledger.committed(ws, live, instance_id=instance.id)
                key = f"instance:{instance.id}:{cap.amount_micros}"
            elif cap.scope == CapScope.MONTHLY:
                used = await self.ledger.committed(ws, live, since=month_start(now))
                key = f"monthly:{live}:{now:%Y-%m}:{cap.amount_micros}"
            else:
                continue
            if cap.amount_micros and used >= cap.amount_micros * NEAR_FRACTION:
                amounts = {
                    "used_usd": micros_to_usd(used),
                    "limit_usd": micros_to_usd(cap.amount_micros),
                }
                warnings.append((cap.scope.value, amounts, key))
        for limit, amounts, key in warnings:
            data = {"limit": limit, "instance_id": instance.id, **amounts}
            event = Event(EventType.SPEND_LIMIT_NEAR, data, livemode=live, dedupe_key=f"near:{key}")
            await notify(self.db, ws, event)

    async def _stop(self, instance: Instance, exc: OverBudget) -> None:
        log.warning("stopping %s: %s", instance.id, exc.limit)
        await self.alerts.raise_alert(
            instance.workspace_id,
            instance.livemode,
            kind="instance_stopped_budget",
            instance_id=instance.id,
            message=f"Instance {instance.id} ({instance.model}) was destroyed before "
            f"its paid time ran out: {exc.message}",
            limit=exc.limit,
        )
        await self.destroy(instance.id, f"budget_exceeded:{exc.limit}")

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.stop()
