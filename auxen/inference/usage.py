"""Usage capture: one row per proxied call, written in small batches off the hot path.

Rows hold counts and timings only. A batch is flushed every `flush_interval_s` and on
shutdown; a crash loses at most that window of metering, never any content (there is
none to lose).

A stream that outlives one flush window gets its row early, with outcome `streaming`, and
each flush checkpoints its counts and `updated_at`; its end turns it into the final row.
If the process dies mid-stream, the reconciler marks rows whose checkpoints stopped as
`interrupted`, keeping the counts of their last checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from auxen.periodic import Periodic
from auxen.store.db import Database
from auxen.store.ids import new_id
from auxen.store.models import Instance, UsageRecord, utcnow

log = logging.getLogger(__name__)


_USAGE = UsageRecord.metadata.tables["usage_record"]
_CHECKPOINT = (
    sa.update(_USAGE)
    .where(_USAGE.c.id == sa.bindparam("row_id"))
    .values(
        {
            c.name: sa.bindparam(c.name)
            for c in _USAGE.columns
            if c.name not in ("id", "created_at", "workspace_id", "instance_id")
        }
    )
)


class UsageRecorder:
    def __init__(self, db: Database, flush_interval_s: float) -> None:
        self.db = db
        self.flush_interval_s = flush_interval_s
        self._buffer: list[dict[str, Any]] = []  # rows to insert
        self._updates: list[dict[str, Any]] = []  # final rows of streams already written
        self._open: dict[str, Callable[[], dict[str, Any]]] = {}  # streams in flight
        self._written: set[str] = set()  # open streams whose row exists (or is being written)
        self._flusher = Periodic("usage flusher", self.flush, flush_interval_s)
        self._lock = asyncio.Lock()

    def record(self, **fields: Any) -> None:
        """Queue one usage row (the columns of UsageRecord). Plain dicts and one
        executemany per batch keep metering cheap on the request path."""
        row_id = fields.setdefault("id", new_id("use"))
        fields.setdefault("created_at", utcnow())
        fields.setdefault("updated_at", None)
        self._open.pop(row_id, None)
        if row_id in self._written:
            self._written.discard(row_id)
            self._updates.append(fields)
        else:
            self._buffer.append(fields)

    def open_stream(self, row_id: str, snapshot: Callable[[], dict[str, Any]]) -> None:
        """A stream has begun; `snapshot()` gives its row as it stands (checkpoints)."""
        self._open[row_id] = snapshot

    def start(self) -> None:
        self._flusher.start(first_after_s=self.flush_interval_s)

    async def flush(self) -> None:
        async with self._lock:
            batch, self._buffer = self._buffer, []
            now = utcnow()
            checkpoints = []
            for row_id, snapshot in list(self._open.items()):
                row = {**snapshot(), "id": row_id, "outcome": "streaming", "updated_at": now}
                if row_id in self._written:
                    checkpoints.append(row)
                else:
                    self._written.add(row_id)
                    batch.append(row)
            # Streams that ended while their first row was being written update it.
            updates, self._updates = self._updates, []
            updates += checkpoints
            if not batch and not updates:
                return
            last_query: dict[str, Any] = {}
            for row in batch:
                last_query[row["instance_id"]] = max(
                    row["created_at"], last_query.get(row["instance_id"], row["created_at"])
                )
            try:
                async with self.db.engine.begin() as conn:
                    if batch:
                        await conn.execute(sa.insert(UsageRecord), batch)
                    if updates:
                        await conn.execute(
                            _CHECKPOINT,
                            [{**u, "row_id": u["id"]} for u in updates if u["id"]],
                        )
                    # The idle timeout counts from each instance's last query.
                    for instance_id, at in last_query.items():
                        await conn.execute(
                            sa.update(Instance)
                            .where(col(Instance.id) == instance_id)
                            .values(last_query_at=at)
                        )
            except Exception:
                log.exception("could not write %d usage records; keeping them", len(batch))
                for row in batch:
                    self._written.discard(row["id"])
                final = [r for r in batch if r["outcome"] != "streaming"]
                # A stream that ended meanwhile must be inserted, not updated.
                unwritten = {r["id"] for r in batch}
                final += [u for u in self._updates if u["id"] in unwritten]
                self._updates = [u for u in self._updates if u["id"] not in unwritten]
                self._buffer[:0] = final
                self._updates[:0] = [u for u in updates if u["outcome"] != "streaming"]

    async def close(self) -> None:
        await self._flusher.stop()
        await self.flush()
