"""Usage: tokens, requests, GPU time and its cost, per instance and in total."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import col, select

from auxen.runtime import Runtime
from auxen.store.models import Instance, LedgerEntry, LedgerKind, UsageRecord, as_utc
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
