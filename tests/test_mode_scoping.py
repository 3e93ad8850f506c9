"""The data layer keeps test mode and live mode apart (SQLite and PostgreSQL): a session
scoped to a mode gets, counts, updates and deletes only that mode's rows (children
through their parent) and refuses to write the other mode's; every tenant table is
placed as per-mode, a per-mode table's child, or workspace-wide."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from auxen.store.db import Database, tenant_tables
from auxen.store.models import Instance, InstanceState, UsageRecord, Workspace
from auxen.store.modes import (
    CHILD_TABLES,
    MODE_TABLES,
    WORKSPACE_WIDE,
    CrossModeWrite,
    mode_scoped,
)


def test_every_tenant_table_is_placed_in_one_kind() -> None:
    kinds = [set(MODE_TABLES), set(CHILD_TABLES), set(WORKSPACE_WIDE)]
    placed = [t for kind in kinds for t in kind]
    assert len(placed) == len(set(placed)), "a table is placed twice"
    missing = {t.__name__ for t in tenant_tables()} - {t.__name__ for t in placed}
    assert missing == set(), f"say whether these are per mode: {missing}"
    assert all(hasattr(t, "livemode") for t in MODE_TABLES)
    assert not any(hasattr(t, "livemode") for t in (*CHILD_TABLES, *WORKSPACE_WIDE))


def _instance(ws: str, livemode: bool) -> Instance:
    return Instance(
        workspace_id=ws, livemode=livemode, model="m", gpu_type="cpu", tier="dedicated",
        provider="local", state=InstanceState.READY, hourly_price_micros=0, ttl_seconds=60,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip


def test_a_mode_scoped_session_sees_and_changes_one_mode(database_url: str) -> None:
    async def go() -> None:
        db = Database(database_url)
        try:
            await db.migrate()
            async with db.system() as session:
                ws = Workspace(name="modes")
                session.add(ws)
                await session.flush()
                live, test = _instance(ws.id, True), _instance(ws.id, False)
                session.add_all([live, test])
                await session.flush()
                for inst in (live, test):
                    session.add(
                        UsageRecord(
                            workspace_id=ws.id, instance_id=inst.id, endpoint="chat",
                            model="m", stream=False, status_code=200, outcome="ok",
                            latency_ms=1.0,
                        )
                    )  # fmt: skip
                await session.commit()
            async with mode_scoped(db, ws.id, False) as session:
                assert await session.get(Instance, live.id) is None
                assert (await session.get(Instance, test.id)) is not None
                assert [i.id for i in (await session.exec(select(Instance))).all()] == [test.id]
                counted = select(sa.func.count()).select_from(UsageRecord)
                assert (await session.exec(counted)).one() == 1
                changed = await session.exec(sa.update(Instance).values(model="changed"))
                assert changed.rowcount == 1
                gone = await session.exec(sa.delete(UsageRecord))
                assert gone.rowcount == 1
                await session.commit()
                session.add(_instance(ws.id, True))
                with pytest.raises(CrossModeWrite):
                    await session.commit()
            async with db.system() as session:
                rows = (await session.exec(select(Instance.livemode, Instance.model))).all()
                usage = (await session.exec(select(UsageRecord.instance_id))).all()
            assert sorted(rows) == [(False, "changed"), (True, "m")]
            assert usage == [live.id]
        finally:
            await db.close()

    asyncio.run(go())
