"""Several control-plane processes on one database: one reconciles at a time (a
PostgreSQL advisory lock; SQLite deployments are one process), and a bring-up belongs to
the process holding the instance's lease until it lapses. Real databases, real managers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import col

from auxen.config import Settings
from auxen.inference.lifecycle import InstanceManager
from auxen.inference.providers.local import LocalVllmProvider
from auxen.store.db import Database
from auxen.store.models import Instance, InstanceState, Workspace
from tests.test_store import _instance, run


def managers(db: Database, tmp: Path) -> tuple[InstanceManager, InstanceManager]:
    settings = Settings(_env_file=None, data_dir=tmp, instance_lease_s=60)
    return (
        InstanceManager(db, LocalVllmProvider(settings), settings),
        InstanceManager(db, LocalVllmProvider(settings), settings),
    )


def test_one_process_reconciles_at_a_time(database_url: str, tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        a, b = managers(db, tmp_path)
        async with a._leadership() as a_leads:
            assert a_leads
            report = await b.reconcile()
            # PostgreSQL: the other process stands aside. SQLite: one process by design.
            assert report.leader is db.is_sqlite
        assert (await b.reconcile()).leader  # released after the pass
        await a.close()
        await b.close()

    run(database_url, body)


def test_a_bring_up_belongs_to_the_lease_holder_until_it_lapses(
    database_url: str, tmp_path: Path
) -> None:
    async def body(db: Database) -> None:
        a, b = managers(db, tmp_path)
        async with db.system() as session:
            ws = Workspace(name="w")
            session.add(ws)
            await session.commit()
            instance = _instance(ws.id)
            instance.state = InstanceState.STARTING
            session.add(instance)
            await session.commit()
        assert await a._claim(instance.id)
        assert await a._claim(instance.id)  # renewing is claiming again
        assert not await b._claim(instance.id)
        async with db.system() as session:  # a's process died: its lease lapses
            await session.exec(
                sa.update(Instance)
                .where(col(Instance.id) == instance.id)
                .values(lease_expires_at=datetime.now(UTC) - timedelta(minutes=5))
            )
            await session.commit()
        assert await b._claim(instance.id)
        assert not await a._claim(instance.id)
        await b._release(instance.id)
        assert await a._claim(instance.id)
        await a.close()
        await b.close()

    run(database_url, body)
