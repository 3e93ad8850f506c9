"""Shared hosts as the operator sees them: what each costs, and scale to zero.

A shared host serves every workspace's `shared-small` instances of one model on the
operator's GPU, paid for only by their tokens, so one nobody uses is pure cost: a host
with no live instance for `AUXEN_SHARED_HOST_IDLE_S` is destroyed, and the next instance
of its model starts a new one (`SharedTier.host_for`). `host_costs` is what the operator
pays for each (`auxen hosts`): its GPU's catalog price for the time it has run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlmodel import col, select

from auxen.billing.catalog import PriceBook
from auxen.inference.shared import HOST_TIER, SHARED_TIER
from auxen.store.db import Database
from auxen.store.models import Instance, InstanceState, as_utc

if TYPE_CHECKING:
    from auxen.inference.lifecycle import InstanceManager

log = logging.getLogger(__name__)

S = InstanceState
_LIVE = [s.value for s in (S.PENDING, S.PROVISIONING, S.STARTING, S.READY, S.STOPPING)]
SCALED_TO_ZERO = "scaled_to_zero"


@dataclass(frozen=True)
class HostCost:
    host_id: str
    model: str
    gpu_type: str
    state: str
    live_instances: int
    running_s: float
    hourly_micros: int  # the operator's cost of its GPU, from the catalog

    @property
    def cost_micros(self) -> int:
        return int(self.hourly_micros * self.running_s / 3600)


async def _live_counts(db: Database) -> dict[str, int]:
    """Live shared-small instances per model, across workspaces (a system read)."""
    async with db.system() as session:
        rows = (
            await session.exec(
                select(Instance.model, sa.func.count())
                .where(col(Instance.tier) == SHARED_TIER)
                .where(col(Instance.state).in_(_LIVE))
                .group_by(col(Instance.model))
            )
        ).all()
    return {model: int(n) for model, n in rows}


async def host_costs(
    db: Database, prices: PriceBook, *, include_ended: bool = False
) -> list[HostCost]:
    now = datetime.now(UTC)
    async with db.system() as session:
        query = select(Instance).where(col(Instance.tier) == HOST_TIER)
        if not include_ended:
            query = query.where(col(Instance.state).in_(_LIVE))
        hosts = (await session.exec(query.order_by(col(Instance.created_at)))).all()
    live = await _live_counts(db)
    costs = []
    for host in hosts:
        started = as_utc(host.created_at)
        ended = host.destroyed_at or host.stopped_at
        running = ((as_utc(ended) if ended else now) - started).total_seconds()
        gpu = prices.gpu_types.get(host.gpu_type)
        costs.append(
            HostCost(
                host.id, host.model, host.gpu_type, host.state.value, live.get(host.model, 0),
                max(running, 0.0), gpu.hourly_price_micros if gpu else 0,
            )
        )  # fmt: skip
    return costs


async def stop_idle_hosts(manager: InstanceManager, idle_s: float) -> list[str]:
    """Destroy hosts whose model has had no live shared-small instance for `idle_s`."""
    now = datetime.now(UTC)
    async with manager.db.system() as session:
        hosts = (
            await session.exec(
                select(Instance)
                .where(col(Instance.tier) == HOST_TIER)
                .where(col(Instance.state) == S.READY.value)
            )
        ).all()
    stopped = []
    for host in hosts:
        # Under the lock `host_for` takes, so no instance attaches to a host going away.
        async with manager.shared.lock_for(host.model):
            if (await _live_counts(manager.db)).get(host.model):
                continue
            if (now - await _idle_since(manager.db, host)).total_seconds() < idle_s:
                continue
            log.info("scaling the shared host %s (%s) to zero", host.id, host.model)
            await manager.destroy(host.id, SCALED_TO_ZERO)
            stopped.append(host.id)
    return stopped


async def _idle_since(db: Database, host: Instance) -> datetime:
    """When its last instance ended (or it became ready, if later)."""
    async with db.system() as session:
        last = (
            await session.exec(
                select(
                    sa.func.max(
                        sa.func.coalesce(col(Instance.destroyed_at), col(Instance.stopped_at))
                    )
                )
                .where(col(Instance.tier) == SHARED_TIER)
                .where(col(Instance.model) == host.model)
            )
        ).one()
    marks = [as_utc(t) for t in (last, host.ready_at, host.created_at) if t is not None]
    return max(marks)
