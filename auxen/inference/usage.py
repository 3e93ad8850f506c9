"""Usage capture: one row per proxied call, written in small batches off the hot path.

Rows hold counts and timings only. A batch is flushed every `flush_interval_s` and on
shutdown; a crash loses at most that window of metering, never any content (there is
none to lose).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from auxen.store.db import Database
from auxen.store.models import UsageRecord

log = logging.getLogger(__name__)


class UsageRecorder:
    def __init__(self, db: Database, flush_interval_s: float) -> None:
        self.db = db
        self.flush_interval_s = flush_interval_s
        self._buffer: list[UsageRecord] = []
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def record(self, row: UsageRecord) -> None:
        self._buffer.append(row)

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name="usage-flusher")

    async def flush(self) -> None:
        async with self._lock:
            batch, self._buffer = self._buffer, []
            if not batch:
                return
            try:
                async with self.db.system() as session:
                    session.add_all(batch)
                    await session.commit()
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
