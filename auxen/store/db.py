"""The async engine, sessions and workspace scoping.

Scoping lives here, in the data layer: a session opened with `Database.scoped(ws)` adds
`workspace_id = ws` to every SELECT, UPDATE and DELETE on tenant tables and refuses to
flush a tenant row that belongs to another workspace. Handlers cannot forget the filter.
`Database.system()` is the explicit, unscoped exception used by key lookup and the
reconciler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from auxen.config import normalise_database_url
from auxen.store.models import TenantScoped

WORKSPACE_KEY = "workspace_id"


class CrossWorkspaceWrite(RuntimeError):
    """A scoped session tried to write a row of another workspace (a bug, never user input)."""


@event.listens_for(Session, "do_orm_execute")
def _scope_to_workspace(state: ORMExecuteState) -> None:
    workspace_id = state.session.info.get(WORKSPACE_KEY)
    if workspace_id is None or not (state.is_select or state.is_update or state.is_delete):
        return
    state.statement = state.statement.options(
        *(
            with_loader_criteria(table, table.workspace_id == workspace_id, include_aliases=True)
            for table in _tenant_tables()
        )
    )


def _tenant_tables() -> list[Any]:
    return [m.class_ for m in SQLModel._sa_registry.mappers if issubclass(m.class_, TenantScoped)]


@event.listens_for(Session, "before_flush")
def _refuse_cross_workspace_writes(session: Session, _ctx: Any, _instances: Any) -> None:
    workspace_id = session.info.get(WORKSPACE_KEY)
    if workspace_id is None:
        return
    for obj in (*session.new, *session.dirty):
        if isinstance(obj, TenantScoped) and obj.workspace_id != workspace_id:
            raise CrossWorkspaceWrite(
                f"{type(obj).__name__} of another workspace in a session scoped to {workspace_id}"
            )


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalise_database_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(
            self.engine, class_=AsyncSession, expire_on_commit=False
        )
        self._locking_engine: AsyncEngine | None = None

    @property
    def locking_engine(self) -> AsyncEngine:
        """An engine whose transactions hold the database's write lock from their start,
        for read-check-write work that other processes must not interleave (the credits
        wallet). On PostgreSQL the plain engine (callers lock rows); on SQLite every
        transaction begins with BEGIN IMMEDIATE (SQLAlchemy's recipe for aiosqlite)."""
        if not self.is_sqlite:
            return self.engine
        if self._locking_engine is None:
            engine = create_async_engine(self.url, connect_args={"timeout": 30})
            event.listen(engine.sync_engine, "connect", _sqlite_immediate)
            event.listen(
                engine.sync_engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE")
            )
            self._locking_engine = engine
        return self._locking_engine

    @asynccontextmanager
    async def scoped(self, workspace_id: str) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            session.sync_session.info[WORKSPACE_KEY] = workspace_id
            yield session

    @asynccontextmanager
    async def system(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from auxen.store.migrate import upgrade_to_head

        async with self.engine.begin() as conn:
            await conn.run_sync(upgrade_to_head)

    async def scrub(self) -> None:
        """After deleting what must not linger (conversation turns): on SQLite, whose
        deletes overwrite the freed content (`secure_delete`), fold the write-ahead log
        into the database file and truncate it, so no old page copy stays on disk.
        PostgreSQL reclaims dead rows with (auto)vacuum."""
        if self.is_sqlite:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        if self._locking_engine is not None:
            await self._locking_engine.dispose()
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the CLI and tests read while the server writes; foreign keys are off by
    # default in SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # Deleted rows are overwritten with zeros, not left in free pages (conversation
    # history must be gone from disk when its instance is destroyed).
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def _sqlite_immediate(dbapi_connection: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_connection, record)
    dbapi_connection.isolation_level = None  # the driver emits no BEGIN of its own
