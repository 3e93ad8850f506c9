"""The chunk store: LanceDB, one namespace (database) per workspace and one table per
knowledge base, so a workspace's data sits apart and deleting a knowledge base drops
its table.

Each table holds (chunk_id, document_id, ordinal, text, vector) with a full-text index
on `text` from the first write, and an ANN index on `vector` once the table passes
`ann_threshold` rows (below that an exact scan is fast enough). Writes to one table
are serialized here: LanceDB resolves concurrent appends, but a delete racing another
commit fails. Deletes prune old versions at once, so a deleted document cannot be read
back from an older version of the table.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from auxen.kb.embeddings import Vectors

if TYPE_CHECKING:
    import lancedb
    import pyarrow as pa


async def load_lancedb() -> ModuleType:
    """LanceDB (with pyarrow), imported the first time a knowledge base is touched and on
    a worker thread: it takes seconds of CPU, which CLI commands and servers that never
    reach a knowledge base should not pay, and which must not stall the event loop."""
    return await asyncio.to_thread(importlib.import_module, "lancedb")


log = logging.getLogger(__name__)

_ID = re.compile(r"^[a-z]{1,8}_[A-Za-z0-9]{1,40}$")
# Rows appended since the indexes were last brought up to date; beyond this many the
# next write folds them in (until then queries scan them exactly).
REINDEX_AFTER_ROWS = 2_000
# IVF-Flat (exact distances within the partitions searched): on a 100k-chunk table of
# MiniLM vectors, 5 of 24 partitions find about 97% of the true top 20 in ~4-5 ms, where
# IVF-PQ (with a refine step) found 59% in ~5 ms and took 30 times longer to build.
ANN_PROBES = 5
ROWS_PER_PARTITION = 4096
COLUMNS = ["chunk_id", "document_id", "ordinal", "text"]


@dataclass(frozen=True)
class Hit:
    knowledge_base_id: str
    chunk_id: str
    document_id: str
    ordinal: int
    text: str
    similarity: float | None  # cosine similarity, for hits from the vector search


def _check_id(value: str) -> str:
    # Ids become directory and table names: only our own prefixed ids get that far.
    if not _ID.match(value):
        raise ValueError(f"not an id: {value[:50]!r}")
    return value


def _schema(dimension: int) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("chunk_id", pa.string()),
            pa.field("document_id", pa.string()),
            pa.field("ordinal", pa.int32()),
            pa.field("text", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dimension)),
        ]
    )


class ChunkStore:
    def __init__(self, uri: str, ann_threshold: int) -> None:
        self.uri = uri
        self.ann_threshold = ann_threshold
        self._dbs: dict[str, lancedb.AsyncConnection] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def workspace_uri(self, workspace_id: str) -> str:
        return f"{self.uri}/{_check_id(workspace_id)}"

    async def _db(self, workspace_id: str) -> lancedb.AsyncConnection:
        db = self._dbs.get(workspace_id)
        if db is None:
            lancedb = await load_lancedb()
            db = await lancedb.connect_async(self.workspace_uri(workspace_id))
            self._dbs[workspace_id] = db
        return db

    def write_lock(self, workspace_id: str, kb_id: str) -> asyncio.Lock:
        return self._locks.setdefault((workspace_id, kb_id), asyncio.Lock())

    async def _open(self, workspace_id: str, kb_id: str) -> Any | None:
        db = await self._db(workspace_id)
        try:
            return await db.open_table(_check_id(kb_id))
        except ValueError:  # no such table: nothing was ever written to this KB
            return None

    async def add(
        self,
        workspace_id: str,
        kb_id: str,
        documents: Sequence[tuple[str, list[str], Vectors]],
    ) -> None:
        """Append the chunks of these documents (id, texts, vectors) in a single commit:
        all of them or none, then index upkeep once."""
        chunk_ids: list[str] = []
        document_ids: list[str] = []
        ordinals: list[int] = []
        texts: list[str] = []
        for document_id, doc_texts, _ in documents:
            chunk_ids += [f"{document_id}:{i}" for i in range(len(doc_texts))]
            document_ids += [document_id] * len(doc_texts)
            ordinals += range(len(doc_texts))
            texts += doc_texts
        if not texts:
            return
        await load_lancedb()  # then pyarrow and lancedb.index are loaded
        import pyarrow as pa
        from lancedb.index import FTS

        vectors = np.concatenate([v for _, _, v in documents])
        batch = pa.table(
            {
                "chunk_id": chunk_ids,
                "document_id": document_ids,
                "ordinal": pa.array(ordinals, pa.int32()),
                "text": texts,
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1]
                ),
            },
            schema=_schema(vectors.shape[1]),
        )
        async with self.write_lock(workspace_id, kb_id):
            table = await self._open(workspace_id, kb_id)
            if table is None:
                db = await self._db(workspace_id)
                table = await db.create_table(kb_id, data=batch)
                await table.create_index("text", config=FTS(with_position=False))
            else:
                await table.add(batch)
            await self._maintain_indexes(table)

    async def _maintain_indexes(self, table: Any) -> None:
        from lancedb.index import IvfFlat

        indexes = {i.columns[0]: i for i in await table.list_indices()}
        rows = await table.count_rows()
        # The vector index's partitions are fixed when it is built; rows added later join
        # them, so a table that doubled since then gets its index built again with more
        # (its name records how many), or every search would probe a large share of it.
        wanted = max(1, min(1024, rows // ROWS_PER_PARTITION))
        built = _partitions_of(indexes["vector"].name) if "vector" in indexes else 0
        if rows >= self.ann_threshold and (built == 0 or wanted >= 2 * built):
            if "vector" in indexes:
                await table.drop_index(indexes["vector"].name)
            await table.create_index(
                "vector",
                config=IvfFlat(distance_type="cosine", num_partitions=wanted),
                name=f"vector_ivf{wanted}",
            )
            return
        stats = await table.index_stats(indexes["text"].name) if "text" in indexes else None
        if stats is not None and stats.num_unindexed_rows >= REINDEX_AFTER_ROWS:
            await table.optimize()

    async def delete_document(self, workspace_id: str, kb_id: str, document_id: str) -> None:
        async with self.write_lock(workspace_id, kb_id):
            table = await self._open(workspace_id, kb_id)
            if table is None:
                return
            if not await table.count_rows(f"document_id = '{_check_id(document_id)}'"):
                return
            await table.delete(f"document_id = '{document_id}'")
            with warnings.catch_warnings():  # writes to this table are serialized here
                warnings.simplefilter("ignore", UserWarning)
                # Compaction rewrites the deleted rows away as a new version; the second
                # pass prunes every version before it, so no old version still has them.
                await table.optimize(cleanup_older_than=timedelta(0))
                await table.optimize(cleanup_older_than=timedelta(0))

    async def drop(self, workspace_id: str, kb_id: str) -> None:
        async with self.write_lock(workspace_id, kb_id):
            db = await self._db(workspace_id)
            if kb_id in (await db.list_tables()).tables:
                await db.drop_table(_check_id(kb_id))
        self._locks.pop((workspace_id, kb_id), None)

    async def count(self, workspace_id: str, kb_id: str, document_id: str | None = None) -> int:
        table = await self._open(workspace_id, kb_id)
        if table is None:
            return 0
        where = f"document_id = '{_check_id(document_id)}'" if document_id else None
        return int(await table.count_rows(where))

    async def versions(self, workspace_id: str, kb_id: str) -> int:
        table = await self._open(workspace_id, kb_id)
        return 0 if table is None else len(await table.list_versions())

    async def search(
        self, workspace_id: str, kb_id: str, vector: Vectors, text: str, limit: int
    ) -> tuple[list[Hit], list[Hit]]:
        """The nearest chunks by vector, and the best by full-text match (BM25)."""
        table = await self._open(workspace_id, kb_id)
        if table is None:
            return [], []
        nearest = (
            table.query()
            .nearest_to(vector.tolist())
            .distance_type("cosine")
            .nprobes(ANN_PROBES)
            .select([*COLUMNS, "_distance"])
            .limit(limit)
        )

        async def by_text_search() -> list[Hit]:
            if not text.strip():
                return []
            try:
                matches = (
                    table.query().nearest_to_text(text).select([*COLUMNS, "_score"]).limit(limit)
                )
                return [
                    Hit(kb_id, r["chunk_id"], r["document_id"], r["ordinal"], r["text"], None)
                    for r in await matches.to_list()
                ]
            except (ValueError, RuntimeError) as exc:  # a query the FTS parser refuses
                log.info("full-text search skipped: %s", type(exc).__name__)
                return []

        # The two searches run at once (LanceDB works in its own threads): the hybrid
        # search takes as long as the slower half, not both.
        vector_rows, by_text = await asyncio.gather(nearest.to_list(), by_text_search())
        by_vector = [
            Hit(kb_id, r["chunk_id"], r["document_id"], r["ordinal"], r["text"],
                1.0 - float(r["_distance"]))
            for r in vector_rows
        ]  # fmt: skip
        return by_vector, by_text

    def close(self) -> None:
        self._dbs.clear()


def _partitions_of(index_name: str) -> int:
    """How many partitions a vector index was built with (from its name)."""
    found = re.fullmatch(r"vector_ivf(\d+)", index_name)
    return int(found.group(1)) if found else 1
