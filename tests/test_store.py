"""The data layer itself scopes every query to one workspace. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel, select

from auxen.store.db import CrossWorkspaceWrite, Database
from auxen.store.migrate import alembic_config
from auxen.store.models import ApiKey, Instance, InstanceState, KeyKind, Workspace


def run(database_url: str, body: Callable[[Database], Awaitable[None]]) -> None:
    async def go() -> None:
        db = Database(database_url)
        try:
            await db.migrate()
            await body(db)
        finally:
            await db.close()

    asyncio.run(go())


def _instance(ws: str) -> Instance:
    return Instance(
        workspace_id=ws,
        livemode=True,
        model="org/m",
        gpu_type="cpu",
        tier="dedicated",
        provider="local",
        state=InstanceState.READY,
        hourly_price_micros=0,
        ttl_seconds=60,
        expires_at=datetime.now(UTC) + timedelta(minutes=1),
    )


def test_migrations_are_repeatable(database_url: str) -> None:
    async def body(db: Database) -> None:
        await db.migrate()  # second time: nothing to do, nothing breaks
        async with db.engine.connect() as conn:
            version = (
                await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            ).scalar_one()
            assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()
            # The migrations build exactly the schema the models describe (besides the
            # row-security secret PostgreSQL keeps from the application, migration 0016).
            opts = {"include_name": lambda name, *_: name != "auxen_scope_key"}
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts=opts), SQLModel.metadata
                )
            )
        assert diff == [], diff

    run(database_url, body)


async def _two_workspaces(db: Database) -> tuple[Workspace, Workspace]:
    async with db.system() as s:
        a, b = Workspace(name="a"), Workspace(name="b")
        s.add_all([a, b])
        await s.commit()
    return a, b


def test_scoped_sessions_never_see_another_workspace(database_url: str) -> None:
    async def body(db: Database) -> None:
        a, b = await _two_workspaces(db)
        async with db.system() as s:
            ia, ib = _instance(a.id), _instance(b.id)
            s.add_all([ia, ib])
            await s.commit()
        async with db.scoped(a.id) as s:
            seen = (await s.exec(select(Instance))).all()
            assert [i.id for i in seen] == [ia.id]
            assert await s.get(Instance, ib.id) is None
            # Bulk updates and deletes are scoped too.
            await s.exec(sa.update(Instance).values(model="changed"))
            await s.exec(sa.delete(Instance).where(Instance.id == ib.id))
            await s.commit()
        async with db.system() as s:
            other = await s.get(Instance, ib.id)
            assert other is not None and other.model == "org/m"
            mine = await s.get(Instance, ia.id)
            assert mine is not None and mine.model == "changed"

    run(database_url, body)


def test_scoped_sessions_refuse_writes_for_another_workspace(database_url: str) -> None:
    async def body(db: Database) -> None:
        a, b = await _two_workspaces(db)
        async with db.scoped(a.id) as s:
            s.add(
                ApiKey(
                    id="k" * 16,
                    workspace_id=b.id,
                    kind=KeyKind.ACCOUNT,
                    livemode=True,
                    display_prefix="x",
                    secret_hash=b"\0" * 32,
                )
            )
            with pytest.raises(CrossWorkspaceWrite):
                await s.commit()

    run(database_url, body)


def test_enums_round_trip(database_url: str) -> None:
    async def body(db: Database) -> None:
        async with db.system() as s:
            ws = Workspace(name="a")
            s.add(ws)
            await s.flush()
            inst = _instance(ws.id)
            s.add(inst)
            await s.commit()
        async with db.scoped(ws.id) as s:
            loaded = await s.get(Instance, inst.id)
            assert loaded is not None and loaded.state is InstanceState.READY

    run(database_url, body)
