"""Migration 0015 records who made each existing key (SQLite, PostgreSQL): from the
audit log where it names the maker (a person, or a key of a person, the chain
followed), else the workspace's owner; instance keys without a record keep no maker."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import command

from auxen.store.db import Database
from auxen.store.migrate import alembic_config

T = datetime(2026, 1, 1, tzinfo=UTC)
USERS = [("usr_owner", "owner"), ("usr_admin", "admin")]
KEYS = [("k_init", "account"), ("k_person", "account"), ("k_chain", "account"),
        ("k_via_init", "account"), ("k_inst", "instance")]  # fmt: skip
# (audit event, actor type, actor id, the key it made)
MADE = [("a1", "user", "usr_admin", "k_person"), ("a2", "api_key", "k_person", "k_chain"),
        ("a3", "api_key", "k_init", "k_via_init")]  # fmt: skip


async def _before_0015(conn: Any) -> None:
    await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0013"))

    async def run(sql: str, **params: Any) -> None:
        await conn.execute(sa.text(sql), {"t": T, **params})

    await run("INSERT INTO workspace (id, name, created_at) VALUES ('ws_b', 'b', :t)")
    for uid, role in USERS:
        await run(
            'INSERT INTO "user" (id, email, created_at) VALUES (:u, :e, :t)',
            u=uid, e=f"{uid}@example.com",
        )  # fmt: skip
        await run(
            "INSERT INTO membership (id, workspace_id, user_id, role, created_at) "
            "VALUES (:m, 'ws_b', :u, :r, :t)",
            m=f"mem_{uid}", u=uid, r=role,
        )  # fmt: skip
    for kid, kind in KEYS:
        await run(
            "INSERT INTO api_key (id, workspace_id, kind, livemode, name, display_prefix, "
            "secret_hash, role, created_at) "
            "VALUES (:k, 'ws_b', :kind, true, '', 'p', :h, 'owner', :t)",
            k=kid, kind=kind, h=secrets.token_bytes(32),
        )  # fmt: skip
    for aid, actor_type, actor_id, target in MADE:
        await run(
            "INSERT INTO audit_event (id, workspace_id, created_at, actor_type, actor_id, "
            "actor_label, action, target_type, target_id, detail) "
            "VALUES (:a, 'ws_b', :t, :at, :ai, '', 'key.create', 'api_key', :k, '{}')",
            a=aid, at=actor_type, ai=actor_id, k=target,
        )  # fmt: skip


def test_migration_0015_backfills_who_made_each_key(database_url: str) -> None:
    async def go() -> list[tuple[Any, ...]]:
        db = Database(database_url)
        try:
            async with db.engine.begin() as conn:
                await _before_0015(conn)
            await db.migrate()
            async with db.engine.connect() as conn:
                found = await conn.execute(
                    sa.text("SELECT id, created_by_user_id, created_via FROM api_key ORDER BY id")
                )
                return [tuple(r) for r in found.all()]
        finally:
            await db.close()

    assert asyncio.run(go()) == [
        ("k_chain", "usr_admin", "api_key"),
        ("k_init", "usr_owner", "migration"),
        ("k_inst", None, "migration"),
        ("k_person", "usr_admin", "person"),
        ("k_via_init", "usr_owner", "api_key"),
    ]
