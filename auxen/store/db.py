"""The async engine, sessions and workspace scoping.

Scoping lives here, in the data layer: a session opened with `Database.scoped(ws)` adds
`workspace_id = ws` to every SELECT, UPDATE and DELETE on tenant tables and refuses to
flush a tenant row that belongs to another workspace. Handlers cannot forget the filter.
`Database.system()` is the explicit, unscoped exception used by key lookup and the
reconciler.

On PostgreSQL the database enforces the same boundary again with row-level security
(migrations 0012 and 0016), keyed on roles: system connections switch to `auxen_app`,
which cannot bypass RLS but whose members the policies admit to every row; scoped
sessions use a second pool that logs in as the database's tenant role
(`auxen.store.tenant_role`), which can never become `auxen_app`, and each of their
transactions names its workspace in `auxen.scope`, signed with a secret the tenant role
cannot read. So raw SQL through a scoped session sees one workspace, and no statement it
runs (setting variables, changing roles) sees more.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from auxen.config import normalise_database_url
from auxen.store import tenant_role
from auxen.store.models import TenantScoped
from auxen.tools.errors import InvalidArgument

WORKSPACE_KEY = "workspace_id"
SCOPE_KEY = "auxen_scope"
# The PostgreSQL role the application acts as (created by migration 0012).
APP_ROLE = "auxen_app"


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
            for table in tenant_tables()
        )
    )


def tenant_tables() -> list[Any]:
    return [m.class_ for m in SQLModel._sa_registry.mappers if issubclass(m.class_, TenantScoped)]


@event.listens_for(Session, "after_begin")
def _scope_transaction(session: Session, _transaction: Any, connection: sa.Connection) -> None:
    """Row-level security: each transaction of a scoped session names its workspace,
    signed (see auxen.store.tenant_role), on the tenant role's connection."""
    token = session.info.get(SCOPE_KEY)
    if token is None or connection.dialect.name != "postgresql":
        return
    connection.execute(sa.text("SELECT set_config('auxen.scope', :t, true)"), {"t": token})


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


@event.listens_for(sa.Engine, "before_cursor_execute")
def _refuse_nul_characters(
    _conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool
) -> None:
    """No value with a NUL character reaches a statement, on any database: PostgreSQL
    refuses such text (a 500 if it got there) and SQLite would store what PostgreSQL
    cannot. JSON bodies are refused with the field's path before they get here
    (`auxen.jsonparse`); this is the one check for every other way in (forms, query
    strings, headers), naming the column the value was for."""
    for params in getattr(context, "compiled_parameters", None) or ():
        for name, value in params.items():
            if isinstance(value, str) and "\x00" in value:
                field = name.rstrip("0123456789").rstrip("_") or name
                raise InvalidArgument(
                    f"{field} contains a NUL character (\\u0000), which cannot be stored; "
                    "remove it",
                    param=field,
                )


class Database:
    """`role`: on PostgreSQL, the role every connection switches to (`SET ROLE`), for a
    URL whose user may bypass row-level security (a superuser or the tables' owner);
    None when the URL's user is already the restricted application role."""

    def __init__(self, url: str, *, echo: bool = False, role: str | None = None) -> None:
        self.url = normalise_database_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        self.role = None if self.is_sqlite else role
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            event.listen(self.engine.sync_engine, "connect", self._postgres_session)
        self._sessions = async_sessionmaker(
            self.engine, class_=AsyncSession, expire_on_commit=False
        )
        self._locking_engine: AsyncEngine | None = None
        self._tenant_lock = asyncio.Lock()
        self._tenant_engine: AsyncEngine | None = None
        self._tenant_sessions: async_sessionmaker[AsyncSession] | None = None
        self._scope_secret: str | None = None

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
        if self.is_sqlite:
            async with self._sessions() as session:
                session.sync_session.info[WORKSPACE_KEY] = workspace_id
                yield session
            return
        sessions, secret = await self._tenant()
        async with sessions() as session:
            session.sync_session.info[WORKSPACE_KEY] = workspace_id
            session.sync_session.info[SCOPE_KEY] = tenant_role.scope_token(workspace_id, secret)
            yield session

    async def _tenant(self) -> tuple[async_sessionmaker[AsyncSession], str]:
        """PostgreSQL: sessions on the tenant role's own pool, and the scope secret (read
        once, as the URL's user)."""
        async with self._tenant_lock:
            if self._tenant_sessions is None:
                owner = create_async_engine(self.url)
                try:
                    async with owner.connect() as conn:
                        role, password, secret = await conn.run_sync(tenant_role.login)
                finally:
                    await owner.dispose()
                url = make_url(self.url).set(username=role, password=password)
                self._tenant_engine = create_async_engine(
                    url, pool_size=10, max_overflow=20, pool_pre_ping=True
                )
                self._tenant_sessions = async_sessionmaker(
                    self._tenant_engine, class_=AsyncSession, expire_on_commit=False
                )
                self._scope_secret = secret
            assert self._scope_secret is not None
            return self._tenant_sessions, self._scope_secret

    @asynccontextmanager
    async def system(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    def _postgres_session(self, dbapi_connection: Any, _record: Any) -> None:
        # Session settings, outside any transaction (a rolled-back one would undo them):
        # system connections act as the system role (see the module docstring).
        if self.role is not None:
            statement = f"SET ROLE {_quoted_identifier(self.role)}"
            dbapi_connection.run_async(lambda conn: conn.execute(statement))

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision, as the URL's own user (the
        tables' owner), not as the restricted application role."""
        from auxen.store.migrate import upgrade_to_head

        kwargs: dict[str, Any] = {"connect_args": {"timeout": 30}} if self.is_sqlite else {}
        engine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(upgrade_to_head)
        finally:
            await engine.dispose()

    async def bypasses_row_security(self) -> bool:
        """Whether this database's connections could read past row-level security (a
        superuser or a BYPASSRLS role). Always False on SQLite, which has none."""
        if self.is_sqlite:
            return False
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.text(
                        "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"
                    )
                )
            ).one()
        return bool(row[0])

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
        if self._tenant_engine is not None:
            await self._tenant_engine.dispose()
        await self.engine.dispose()


def _quoted_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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
