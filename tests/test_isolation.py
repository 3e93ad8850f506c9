"""Workspace isolation enforced by PostgreSQL itself (row-level security), beneath the
scoped sessions of tests/test_store.py: raw SQL with no workspace filter, run through a
workspace's session, sees and changes that workspace's rows only; the application role
cannot bypass the policies; and a connection of that role that names no workspace sees
nothing at all."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel

from auxen.store import tenant_role
from auxen.store.db import APP_ROLE, Database
from auxen.store.models import ApiKey, KeyKind, Membership, Role, TenantScoped, User, Workspace
from tests.test_store import _instance


@pytest.fixture(scope="module")
def pg_url(database_url: str) -> Iterator[str]:
    if not database_url.startswith("postgresql"):
        pytest.skip("row-level security is PostgreSQL's; SQLite relies on scoped sessions")
    yield database_url


def run(url: str, body: Callable[[Database], Awaitable[None]]) -> None:
    async def go() -> None:
        await Database(url).migrate()
        db = Database(url, role=APP_ROLE)  # as the server connects
        try:
            await body(db)
        finally:
            await db.close()

    asyncio.run(go())


async def _seed(db: Database) -> tuple[str, str]:
    async with db.system() as s:
        a, b = Workspace(name="a"), Workspace(name="b")
        s.add_all([a, b])
        await s.flush()
        s.add_all([_instance(a.id), _instance(a.id), _instance(b.id)])
        await s.commit()
    return a.id, b.id


def tenant_tables() -> set[str]:
    return {
        m.class_.__tablename__
        for m in SQLModel._sa_registry.mappers
        if issubclass(m.class_, TenantScoped)
    }


def test_every_tenant_table_has_a_forced_policy(pg_url: str) -> None:
    async def body(db: Database) -> None:
        async with db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.text(
                        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
                        "count(p.policyname) FROM pg_class c "
                        "LEFT JOIN pg_policies p ON p.tablename = c.relname "
                        "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' "
                        "GROUP BY 1, 2, 3"
                    )
                )
            ).all()
        protected = {name for name, enabled, forced, policies in rows if enabled and forced}
        with_policy = {name for name, _, _, policies in rows if policies}
        expected = tenant_tables() | {"workspace"}
        assert expected <= protected, f"no forced row security: {expected - protected}"
        assert expected <= with_policy, f"no policy: {expected - with_policy}"

    run(pg_url, body)


def test_the_application_role_cannot_bypass_row_security(pg_url: str) -> None:
    async def body(db: Database) -> None:
        assert await db.bypasses_row_security() is False
        async with db.engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT current_user"))).scalar_one() == APP_ROLE
        owner = Database(pg_url)  # the tests' superuser: the check sees through it
        try:
            assert await owner.bypasses_row_security() is True
        finally:
            await owner.close()

    run(pg_url, body)


def test_raw_sql_without_a_filter_sees_one_workspace(pg_url: str) -> None:
    async def body(db: Database) -> None:
        a, b = await _seed(db)
        async with db.scoped(a) as s:
            seen = (await s.execute(sa.text("SELECT workspace_id FROM instance"))).scalars()
            assert sorted(seen) == [a, a]
            workspaces = (await s.execute(sa.text("SELECT id FROM workspace"))).scalars()
            assert list(workspaces) == [a]
            # Unfiltered writes reach this workspace's rows only.
            await s.execute(sa.text("UPDATE instance SET model = 'changed'"))
            deleted = await s.execute(
                sa.text("DELETE FROM instance WHERE workspace_id = :b"), {"b": b}
            )
            assert deleted.rowcount == 0
            await s.commit()
        async with db.system() as s:
            models = dict(
                (await s.execute(sa.text("SELECT workspace_id, model FROM instance")))
                .tuples()
                .all()
            )
            assert models == {a: "changed", b: "org/m"}

    run(pg_url, body)


def test_raw_sql_cannot_write_a_row_into_another_workspace(pg_url: str) -> None:
    async def body(db: Database) -> None:
        a, b = await _seed(db)
        async with db.scoped(a) as s:
            with pytest.raises(sa.exc.DBAPIError, match="row-level security"):
                await s.execute(
                    sa.insert(ApiKey).values(
                        id="k" * 16,
                        workspace_id=b,
                        kind=KeyKind.ACCOUNT,
                        livemode=True,
                        display_prefix="x",
                        secret_hash=b"\0" * 32,
                        name="",
                        created_at=sa.func.now(),
                    )
                )

    run(pg_url, body)


async def _tenant_connection(url: str) -> asyncpg.Connection:
    """A raw connection as the database's tenant role, as the server's scoped sessions log in."""
    owner = await asyncpg.connect(url.replace("postgresql://", "postgres://"))
    try:
        secret = await owner.fetchval("SELECT secret FROM auxen_scope_key WHERE id = 1")
        database = await owner.fetchval("SELECT current_database()")
    finally:
        await owner.close()
    return await asyncpg.connect(
        url.replace("postgresql://", "postgres://"),
        user=tenant_role.role_name(database),
        password=tenant_role.password(secret),
    )


def test_a_connection_that_names_no_workspace_sees_nothing(pg_url: str) -> None:
    async def body(db: Database) -> None:
        a, _ = await _seed(db)
        conn = await _tenant_connection(pg_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM instance") == 0
            assert await conn.fetchval("SELECT count(*) FROM workspace") == 0
            # Naming a workspace without its signature shows nothing either: the policy
            # keys on the role and a signed scope, not on a setting anyone can write.
            async with conn.transaction():
                await conn.execute("SELECT set_config('auxen.workspace_id', $1, true)", a)
                await conn.execute("SELECT set_config('auxen.scope', $1, true)", a + ".x")
                assert await conn.fetchval("SELECT count(*) FROM instance") == 0
        finally:
            await conn.close()

    run(pg_url, body)


# What SQL injected into a tenant's statements might try, to see past its workspace.
WIDENING = (
    "SELECT set_config('auxen.system', 'on', false)",
    "SET auxen.system = 'on'",
    "SELECT set_config('auxen.workspace_id', '{b}', false)",
    "SELECT set_config('auxen.scope', '{b}.' || split_part(current_setting('auxen.scope'), "
    "'.', 2), false)",
    "RESET ROLE",
    f"SET ROLE {APP_ROLE}",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "SELECT secret FROM auxen_scope_key",
    f"GRANT {APP_ROLE} TO CURRENT_USER",
    "ALTER TABLE instance DISABLE ROW LEVEL SECURITY",
    "DROP POLICY workspace_isolation ON instance",
    "CREATE FUNCTION pg_temp.all_rows() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
    "AS 'SELECT count(*) FROM instance'",
)


def test_a_tenant_connection_cannot_widen_what_it_sees(pg_url: str) -> None:
    async def body(db: Database) -> None:
        a, b = await _seed(db)
        for statement in WIDENING:
            async with db.scoped(a) as s:
                try:
                    await s.execute(sa.text(statement.format(b=b)))
                except sa.exc.DBAPIError:
                    await s.rollback()
                for query in (
                    "SELECT DISTINCT workspace_id FROM instance",
                    "SELECT id FROM workspace",
                ):
                    seen = (await s.execute(sa.text(query))).scalars().all()
                    assert set(seen) <= {a}, (statement, query, seen)  # never b's
        async with db.scoped(a) as s:  # the pool's connections still see their workspace
            assert (await s.execute(sa.text("SELECT id FROM workspace"))).scalars().all() == [a]
        conn = await _tenant_connection(pg_url)
        try:
            for statement in WIDENING:
                with contextlib.suppress(asyncpg.PostgresError):
                    await conn.execute(statement.format(b=b))
                assert await conn.fetchval("SELECT count(*) FROM instance") == 0, statement
        finally:
            await conn.close()

    run(pg_url, body)


def test_ids_are_unguessable() -> None:
    from auxen.store.ids import new_id

    ids = {new_id("inst") for _ in range(2000)}
    assert len(ids) == 2000
    body = next(iter(ids)).removeprefix("inst_")
    assert len(body) >= 20  # 20 base62 characters: 119 bits from the CSPRNG


def test_a_tenant_sees_its_members_emails_and_no_secrets_of_anyone(pg_url: str) -> None:
    async def body(db: Database) -> None:
        a, b = await _seed(db)
        async with db.system() as s:
            mine, theirs = User(email="mine@example.com"), User(email="theirs@example.com")
            s.add_all([mine, theirs])
            await s.flush()
            s.add_all(
                [
                    Membership(workspace_id=a, user_id=mine.id, role=Role.OWNER),
                    Membership(workspace_id=b, user_id=theirs.id, role=Role.OWNER),
                ]
            )
            await s.commit()
        async with db.scoped(a) as s:
            emails = (await s.execute(sa.text('SELECT email FROM "user"'))).scalars().all()
            assert emails == ["mine@example.com"]
        for secret in (
            'SELECT password_hash FROM "user"',
            'SELECT totp_secret_sealed FROM "user"',
            *(f"SELECT * FROM {table}" for table in tenant_role.PRIVATE_TABLES),
        ):
            async with db.scoped(a) as s:
                with pytest.raises(sa.exc.DBAPIError, match="permission denied"):
                    await s.execute(sa.text(secret))

    run(pg_url, body)
