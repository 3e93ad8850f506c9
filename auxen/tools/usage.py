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
    caller.require_account()
    await rt.usage.flush()  # read-your-writes: calls this process just metered count
    now = datetime.now(UTC)
    async with rt.db.scoped(caller.workspace_id) as session:
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


def _day(value: object) -> date:
    """`date(ts)` comes back as a date (PostgreSQL) or an ISO string (SQLite)."""
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _in_mode(caller: Caller) -> sa.ColumnElement[bool]:
    # Usage rows carry no mode of their own: they are their instance's.
    modes = select(col(Instance.id)).where(col(Instance.livemode) == caller.livemode)
    return col(UsageRecord.instance_id).in_(modes)


async def usage_by_day(rt: Runtime, caller: Caller, *, days: int) -> list[DayUsage]:
    """Requests, tokens and charges per UTC day for the last `days` days (today
    included), every day present even when nothing happened."""
    caller.require_account()
    if not 1 <= days <= 366:
        raise InvalidArgument("days must be between 1 and 366", param="days")
    await rt.usage.flush()
    today = datetime.now(UTC).date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    async with rt.db.scoped(caller.workspace_id) as session:
        use_day = sa.func.date(UsageRecord.created_at)
        tokens = {
            _day(row[0]): row[1:]
            for row in (
                await session.exec(
                    select(
                        use_day,
                        sa.func.count(),
                        sa.func.coalesce(sa.func.sum(UsageRecord.prompt_tokens), 0),
                        sa.func.coalesce(sa.func.sum(UsageRecord.completion_tokens), 0),
                    )
                    .where(col(UsageRecord.created_at) >= since, _in_mode(caller))
                    .group_by(use_day)
                )
            ).all()
        }
        charge_day = sa.func.date(LedgerEntry.created_at)
        charged = {
            _day(row[0]): int(row[1])
            for row in (
                await session.exec(
                    select(charge_day, sa.func.sum(LedgerEntry.amount_micros))
                    .where(
                        col(LedgerEntry.kind) == LedgerKind.CHARGE.value,
                        col(LedgerEntry.livemode) == caller.livemode,
                        col(LedgerEntry.created_at) >= since,
                    )
                    .group_by(charge_day)
                )
            ).all()
        }
    out = []
    for n in range(days):
        day = first + timedelta(days=n)
        requests, prompt, completion = tokens.get(day, (0, 0, 0))
        out.append(DayUsage(day, int(requests), int(prompt), int(completion), charged.get(day, 0)))
    return out


async def usage_by_instance(
    rt: Runtime, caller: Caller, *, days: int, limit: int = 50, offset: int = 0
) -> tuple[list[InstanceSpend], int]:
    """The instances that used or were charged anything in the last `days` days, dearest
    first, one page of them; and how many there are in all."""
    caller.require_account()
    if not 1 <= days <= 366:
        raise InvalidArgument("days must be between 1 and 366", param="days")
    if not 1 <= limit <= 1000 or offset < 0:
        raise InvalidArgument("limit must be 1-1000 and offset not negative", param="limit")
    await rt.usage.flush()
    first = datetime.now(UTC).date() - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    used = (
        select(
            col(UsageRecord.instance_id).label("instance_id"),
            sa.func.count().label("requests"),
            sa.func.sum(UsageRecord.prompt_tokens).label("prompt"),
            sa.func.sum(UsageRecord.completion_tokens).label("completion"),
        )
        .where(
            col(UsageRecord.workspace_id) == caller.workspace_id,
            col(UsageRecord.created_at) >= since,
        )
        .group_by(col(UsageRecord.instance_id))
        .subquery()
    )
    charged = (
        select(
            col(LedgerEntry.instance_id).label("instance_id"),
            sa.func.sum(LedgerEntry.amount_micros).label("micros"),
        )
        .where(
            col(LedgerEntry.workspace_id) == caller.workspace_id,
            col(LedgerEntry.kind) == LedgerKind.CHARGE.value,
            col(LedgerEntry.created_at) >= since,
        )
        .group_by(col(LedgerEntry.instance_id))
        .subquery()
    )
    micros = sa.func.coalesce(charged.c.micros, 0)
    query = (
        sa.select(
            col(Instance.id),
            col(Instance.model),
            col(Instance.state),
            sa.func.coalesce(used.c.requests, 0),
            sa.func.coalesce(used.c.prompt, 0),
            sa.func.coalesce(used.c.completion, 0),
            micros,
        )
        .outerjoin(used, used.c.instance_id == col(Instance.id))
        .outerjoin(charged, charged.c.instance_id == col(Instance.id))
        .where(
            col(Instance.livemode) == caller.livemode,
            sa.or_(used.c.instance_id.is_not(None), charged.c.instance_id.is_not(None)),
        )
    )
    async with rt.db.scoped(caller.workspace_id) as session:
        total = (
            await session.execute(sa.select(sa.func.count()).select_from(query.subquery()))
        ).scalar_one()
        rows = (
            await session.execute(
                query.order_by(micros.desc(), col(Instance.id)).limit(limit).offset(offset)
            )
        ).all()
    return [
        InstanceSpend(r[0], r[1], InstanceState(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]))
        for r in rows
    ], int(total)


async def charged_by_instance(
    rt: Runtime, caller: Caller, instance_ids: list[str]
) -> dict[str, int]:
    """What the ledger has charged each of these instances so far (their cost so far)."""
    caller.require_account()
    if not instance_ids:
        return {}
    async with rt.db.scoped(caller.workspace_id) as session:
        rows = await session.exec(
            select(LedgerEntry.instance_id, sa.func.sum(LedgerEntry.amount_micros))
            .where(
                col(LedgerEntry.kind) == LedgerKind.CHARGE.value,
                col(LedgerEntry.instance_id).in_(instance_ids[:1000]),
            )
            .group_by(col(LedgerEntry.instance_id))
        )
        return {str(row[0]): int(row[1]) for row in rows.all()}
