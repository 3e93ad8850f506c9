"""Reading a running server's database from tests: raw SQL, and the ledger's invariant
that every reservation is settled exactly once for exactly what it held."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import sqlalchemy as sa

from auxen.store.db import Database

SETTLEMENTS = (
    "SELECT r.id, r.amount_micros, r.open, COALESCE(SUM(CASE WHEN l.kind IN "
    "('charge', 'release') THEN l.amount_micros END), 0) FROM reservation r "
    "LEFT JOIN ledger_entry l ON l.reservation_id = r.id WHERE r.workspace_id = :w "
    "GROUP BY r.id, r.amount_micros, r.open"
)


def sql(database_url: str, query: str, **params: Any) -> list[tuple[Any, ...]]:
    async def run() -> list[tuple[Any, ...]]:
        db = Database(database_url)
        try:
            async with db.engine.connect() as conn:
                return [tuple(r) for r in (await conn.execute(sa.text(query), params)).all()]
        finally:
            await db.close()

    return asyncio.run(run())


def settled_exactly(database_url: str, workspace_id: str, *, wait_s: float = 0.0) -> list[bool]:
    """Check that every closed reservation of the workspace was charged plus released
    exactly what it held and every open one neither (waiting up to `wait_s` for open
    ones to close); the open flag of each reservation."""
    deadline = time.monotonic() + wait_s
    while True:
        rows = sql(database_url, SETTLEMENTS, w=workspace_id)
        if not any(is_open for _, _, is_open, _ in rows) or time.monotonic() >= deadline:
            break
        time.sleep(0.3)
    for rid, amount, is_open, settled in rows:
        assert settled == (0 if is_open else amount), rid
    return [bool(is_open) for _, _, is_open, _ in rows]
