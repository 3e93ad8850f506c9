"""Migration 0010 moves each workspace's alert webhook (0008) into a webhook endpoint
that keeps its URL and sealed secret and gets the same events (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command

from auxen.store.db import Database
from auxen.store.migrate import alembic_config


def test_the_alert_webhook_becomes_a_webhook_endpoint(database_url: str) -> None:
    async def go() -> None:
        db = Database(database_url)
        try:
            async with db.engine.begin() as conn:
                await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0008"))
                await conn.execute(
                    sa.text(
                        "INSERT INTO workspace (id, name, alert_webhook_url, alert_webhook_sealed,"
                        " created_at) VALUES ('ws_hooked', 'h', 'https://hooks.example/a', :s, "
                        ":t), ('ws_plain', 'p', NULL, NULL, :t)"
                    ),
                    {"s": b"sealed-secret", "t": datetime(2026, 1, 1, tzinfo=UTC)},
                )
            await db.migrate()
            async with db.engine.connect() as conn:
                endpoints = (
                    await conn.execute(
                        sa.text(
                            "SELECT workspace_id, url, secret_sealed, events, alerts "
                            "FROM webhook_endpoint"
                        )
                    )
                ).all()
                left = (
                    await conn.execute(
                        sa.text(
                            "SELECT COUNT(*) FROM workspace WHERE alert_webhook_url IS NOT NULL"
                        )
                    )
                ).scalar_one()
        finally:
            await db.close()
        assert [tuple(e) for e in endpoints] == [
            ("ws_hooked", "https://hooks.example/a", b"sealed-secret", "spend_limit_reached", True)
        ]
        assert left == 0

    asyncio.run(go())
