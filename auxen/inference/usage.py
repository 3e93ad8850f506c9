"""Usage capture: one row per proxied call, written in small batches off the hot path.

Rows hold counts and timings only. A batch is flushed every `flush_interval_s` and on
shutdown; a crash loses at most that window of metering, never any content (there is
none to lose).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from auxen.store.db import Database
from auxen.store.ids import new_id
from auxen.store.models import Instance, UsageRecord, utcnow

log = logging.getLogger(__name__)


class UsageRecorder:
    def __init__(self, db: Database, flush_interval_s: float) -> None:
        self.db = db
        self.flush_interval_s = flush_interval_s
        self._buffer: list[dict[str, Any]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def record(self, **fields: Any) -> None:
        """Queue one usage row (the columns of UsageRecord). Plain dicts and one
        executemany per batch keep metering cheap on the request path."""
        fields.setdefault("id", new_id("use"))
        fields.setdefault("created_at", utcnow())
        self._buffer.append(fields)

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name="usage-flusher")

    async def flush(self) -> None:
        async with self._lock:
            batch, self._buffer = self._buffer, []
            if not batch:
                return
            last_query: dict[str, Any] = {}
            for row in batch:
                last_query[row["instance_id"]] = max(
                    row["created_at"], last_query.get(row["instance_id"], row["created_at"])
                )
            try:
                async with self.db.engine.begin() as conn:
                    await conn.execute(sa.insert(UsageRecord), batch)
                    # The idle timeout counts from each instance's last query.
                    for instance_id, at in last_query.items():
                        await conn.execute(
                            sa.update(Instance)
                            .where(col(Instance.id) == instance_id)
                            .values(last_query_at=at)
                        )
            except Exception:
                log.exception("could not write %d usage records; keeping them", len(batch))
                self._buffer[:0] = batch

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self.flush()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()
