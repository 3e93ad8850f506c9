"""One shared-small host per model, across every process on the database.

Choosing a model's host and making one when there is none happen in one transaction
that holds the database's lock for it from its start: a transaction advisory lock on
PostgreSQL, the write lock (BEGIN IMMEDIATE, `Database.locking_engine`) on SQLite. So
servers provisioning the same model at once find the same host. Hosts found
in excess anyway (made before this guard) are stopped by the reconciler once the kept
host is ready, after the logical instances they served move to it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auxen.auth.sealing import seal, unseal
from auxen.store.models import Instance, InstanceState

if TYPE_CHECKING:
    from auxen.inference.lifecycle import InstanceManager

S = InstanceState
HOST_LIVE = (S.PENDING, S.PROVISIONING, S.STARTING, S.READY)
# The advisory lock held while a host is chosen or made (hosts are made rarely: one lock).
HOST_LOCK_ID = 0x4155_5845_4E48_4F53  # "AUXENHOS"
DUPLICATE_HOST = "duplicate_host"


async def live_host(
    session: AsyncSession,
    hosts_workspace: str,
    model: str,
    make: Callable[[], Awaitable[Instance]],
) -> tuple[Instance, bool]:
    """The model's live host, or the one `make` adds to `session` when there is none
    (committed here); True when it was made. `session` must be on the locking engine."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        conn = await session.connection()
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": HOST_LOCK_ID})
    host = (
        await session.exec(
            select(Instance)
            .where(col(Instance.workspace_id) == hosts_workspace)
            .where(col(Instance.model) == model)
            .where(col(Instance.state).in_([s.value for s in HOST_LIVE]))
            .order_by(col(Instance.created_at), col(Instance.id))
        )
    ).first()
    if host is not None:
        await session.commit()
        return host, False
    host = await make()
    await session.commit()
    return host, True


async def stop_extra_hosts(
    manager: InstanceManager, hosts_workspace: str, host_tier: str, shared_tier: str
) -> list[str]:
    """For the reconciler: of several live hosts of one model, keep the oldest ready one,
    move the logical instances the others serve to it, and destroy the others."""
    db, master = manager.db, manager.settings.master_key_bytes
    async with db.system() as session:
        hosts = (
            await session.exec(
                select(Instance)
                .where(col(Instance.workspace_id) == hosts_workspace)
                .where(col(Instance.tier) == host_tier)
                .where(col(Instance.state).in_([s.value for s in HOST_LIVE]))
                .order_by(col(Instance.created_at), col(Instance.id))
            )
        ).all()
    by_model: dict[str, list[Instance]] = {}
    for host in hosts:
        by_model.setdefault(host.model, []).append(host)
    stopped: list[str] = []
    for same_model in by_model.values():
        ready = [h for h in same_model if h.state is S.READY and h.upstream_key_sealed]
        if len(same_model) < 2 or not ready:
            continue  # nothing to move its instances to yet
        keep = ready[0]
        assert keep.upstream_key_sealed is not None
        key = unseal(master, hosts_workspace, keep.upstream_key_sealed)
        for extra in same_model:
            if extra.id == keep.id:
                continue
            async with db.system() as session:
                served = (
                    await session.exec(
                        select(Instance)
                        .where(col(Instance.tier) == shared_tier)
                        .where(col(Instance.model) == extra.model)
                        .where(col(Instance.state) == S.READY.value)
                        .where(col(Instance.upstream_url) == extra.upstream_url)
                    )
                ).all()
                for instance in served:
                    instance.upstream_url = keep.upstream_url
                    instance.upstream_key_sealed = seal(master, instance.workspace_id, key)
                    session.add(instance)
                await session.commit()
            for instance in served:
                manager.on_change(instance.id)
            await manager.destroy(extra.id, DUPLICATE_HOST)
            stopped.append(extra.id)
    return stopped
