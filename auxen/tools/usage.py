"""Usage: tokens, requests, GPU time and its cost, per instance and in total."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import col, select

from auxen.runtime import Runtime
from auxen.store.models import (
    Instance,
    InstanceState,
    LedgerEntry,
    LedgerKind,
    UsageRecord,
    as_utc,
)
from auxen.tools.context import Caller
from auxen.tools.errors import InvalidArgument
from auxen.tools.permissions import Permission
from auxen.tools.views import InstanceUsage, UsageSummary, _iso, micros_to_usd


def parse_since(value: str) -> datetime:
    try:
        since = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            "since must be an ISO 8601 time such as 2026-11-01T00:00:00Z", param="since"
        ) from None
    if since.tzinfo is None:
        raise InvalidArgument("since must include a time zone (e.g. Z)", param="since")
    return since


async def get_usage(
    rt: Runtime, caller: Caller, *, instance_id: str | None = None, since: datetime | None = None
) -> UsageSummary:
    caller.require(Permission.USAGE_READ)
    await rt.usage.flush()  # read-your-writes: calls this process just metered count
    now = datetime.now(UTC)
    async with caller.scoped(rt.db) as session:
        instances_q = select(Instance).where(col(Instance.livemode) == caller.livemode)
        if instance_id is not None:
            instances_q = instances_q.where(col(Instance.id) == instance_id)
        instances = {i.id: i for i in (await session.exec(instances_q)).all()}
        usage_q = (
            select(
                UsageRecord.instance_id,
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(UsageRecord.prompt_tokens), 0),
                sa.func.coalesce(sa.func.sum(UsageRecord.completion_tokens), 0),
            )
            .where(col(UsageRecord.instance_id).in_(list(instances)))
            .group_by(col(UsageRecord.instance_id))
        )
        if since is not None:
            usage_q = usage_q.where(col(UsageRecord.created_at) >= since)
        tokens = {row[0]: row[1:] for row in (await session.exec(usage_q)).all()}
        charges_q = (
            select(LedgerEntry.instance_id, sa.func.sum(LedgerEntry.amount_micros))
            .where(col(LedgerEntry.kind) == LedgerKind.CHARGE.value)
            .where(col(LedgerEntry.instance_id).in_(list(instances)))
            .group_by(col(LedgerEntry.instance_id))
        )
        if since is not None:
            charges_q = charges_q.where(col(LedgerEntry.created_at) >= since)
        charged = {row[0]: int(row[1]) for row in (await session.exec(charges_q)).all()}
    per_instance: list[InstanceUsage] = []
    for inst in instances.values():
        requests, prompt, completion = tokens.get(inst.id, (0, 0, 0))
        start = as_utc(inst.created_at)
        if since is not None:
            start = max(start, since)
        end = as_utc(inst.stopped_at or inst.destroyed_at or now)
        gpu_seconds = max(0.0, (end - start).total_seconds())
        cost = round(gpu_seconds * inst.hourly_price_micros / 3600)
        per_instance.append(
            InstanceUsage(
                instance_id=inst.id,
                model=inst.model,
                state=inst.state,
                requests=int(requests),
                prompt_tokens=int(prompt),
                completion_tokens=int(completion),
                gpu_seconds=round(gpu_seconds, 3),
                cost_micros=cost,
                cost_usd=micros_to_usd(cost),
                charged_micros=charged.get(inst.id, 0),
            )
        )
    total_cost = sum(i.cost_micros for i in per_instance)
    return UsageSummary(
        since=_iso(since),
        until=_iso(now) or "",
        requests=sum(i.requests for i in per_instance),
        prompt_tokens=sum(i.prompt_tokens for i in per_instance),
        completion_tokens=sum(i.completion_tokens for i in per_instance),
        gpu_seconds=round(sum(i.gpu_seconds for i in per_instance), 3),
        cost_micros=total_cost,
        cost_usd=micros_to_usd(total_cost),
        instances=per_instance,
    )


# -- aggregates for charts and tables (summed in the database, never row by row) ---------


@dataclass(frozen=True)
class DayUsage:
    day: date
    requests: int
    prompt_tokens: int
    completion_tokens: int
    charged_micros: int  # what the ledger charged that day (GPU ticks, tokens)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class InstanceSpend:
    instance_id: str
    model: str
    state: InstanceState
    requests: int
    prompt_tokens: int
    completion_tokens: int
    charged_micros: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _day(value: object) -> date:
    """`date(ts)` comes back as a date (PostgreSQL) or an ISO string (SQLite)."""
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


@dataclass(frozen=True)
class UsageBreakdown:
    days: list[DayUsage]  # oldest first, every day of the window
    instances: list[InstanceSpend]  # those that used or were charged anything, dearest first


async def usage_breakdown(rt: Runtime, caller: Caller, *, days: int) -> UsageBreakdown:
    """Requests, tokens and charges of the last `days` UTC days (today included), per day
    and per instance. The database sums the rows per (day, instance) in two passes over
    the window, read from the covering indexes (usage, then ledger charges); what comes
    back is at most one row per instance and day, folded into both views here."""
    caller.require(Permission.USAGE_READ)
    if not 1 <= days <= 366:
        raise InvalidArgument("days must be between 1 and 366", param="days")
    await rt.usage.flush()  # read-your-writes: calls this process just metered count
    first = datetime.now(UTC).date() - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    use_day, charge_day = sa.func.date(UsageRecord.created_at), sa.func.date(LedgerEntry.created_at)
    async with caller.scoped(rt.db) as session:
        used = (
            await session.exec(  # type: ignore[call-overload]  # five columns: Core select
                sa.select(
                    use_day,
                    col(UsageRecord.instance_id),
                    sa.func.count(),
                    sa.func.sum(UsageRecord.prompt_tokens),
                    sa.func.sum(UsageRecord.completion_tokens),
                )
                .where(
                    col(UsageRecord.workspace_id) == caller.workspace_id,
                    col(UsageRecord.created_at) >= since,
                )
                .group_by(use_day, col(UsageRecord.instance_id))
            )
        ).all()
        charged = (
            await session.exec(
                select(
                    charge_day, col(LedgerEntry.instance_id), sa.func.sum(LedgerEntry.amount_micros)
                )
                .where(
                    col(LedgerEntry.workspace_id) == caller.workspace_id,
                    col(LedgerEntry.kind) == LedgerKind.CHARGE.value,
                    col(LedgerEntry.created_at) >= since,
                    col(LedgerEntry.livemode) == caller.livemode,
                )
                .group_by(charge_day, col(LedgerEntry.instance_id))
            )
        ).all()
        ids = {str(r[1]) for r in used} | {str(r[1]) for r in charged if r[1] is not None}
        # Usage rows carry no mode of their own: they are their instance's.
        known = {
            row[0]: (row[1], InstanceState(row[2]))
            for row in (
                await session.exec(
                    select(col(Instance.id), col(Instance.model), col(Instance.state)).where(
                        col(Instance.livemode) == caller.livemode, col(Instance.id).in_(ids)
                    )
                )
            ).all()
        }
    per_day: dict[date, list[int]] = {first + timedelta(days=n): [0, 0, 0, 0] for n in range(days)}
    per_instance: dict[str, list[int]] = {}
    for day, instance_id, requests, prompt, completion in used:
        if instance_id not in known:
            continue
        for totals in (per_day.setdefault(_day(day), [0, 0, 0, 0]),
                       per_instance.setdefault(instance_id, [0, 0, 0, 0])):  # fmt: skip
            totals[0] += int(requests)
            totals[1] += int(prompt or 0)
            totals[2] += int(completion or 0)
    for day, instance_id, micros in charged:
        per_day.setdefault(_day(day), [0, 0, 0, 0])[3] += int(micros)
        if instance_id in known:
            per_instance.setdefault(instance_id, [0, 0, 0, 0])[3] += int(micros)
    return UsageBreakdown(
        days=[DayUsage(d, *per_day[d]) for d in sorted(per_day) if d >= first],
        instances=sorted(
            (InstanceSpend(i, *known[i], *t) for i, t in per_instance.items()),
            key=lambda s: (-s.charged_micros, -s.tokens, s.instance_id),
        ),
    )


async def charged_by_instance(
    rt: Runtime, caller: Caller, instance_ids: list[str]
) -> dict[str, int]:
    """What the ledger has charged each of these instances so far (their cost so far)."""
    caller.require(Permission.USAGE_READ)
    if not instance_ids:
        return {}
    async with caller.scoped(rt.db) as session:
        rows = await session.exec(
            select(LedgerEntry.instance_id, sa.func.sum(LedgerEntry.amount_micros))
            .where(
                col(LedgerEntry.kind) == LedgerKind.CHARGE.value,
                col(LedgerEntry.instance_id).in_(instance_ids[:1000]),
            )
            .group_by(col(LedgerEntry.instance_id))
        )
        return {str(row[0]): int(row[1]) for row in rows.all()}
