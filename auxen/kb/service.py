"""The knowledge-base engine one control plane shares: chunker, embedder and chunk
store, plus a short-lived cache of which knowledge bases each instance retrieves from
(asked on every chat request, so instances without any cost no query)."""

from __future__ import annotations

import asyncio
import time

from auxen.config import Settings
from auxen.kb.chunking import Chunker, load_tokenizer
from auxen.kb.embeddings import MiniLM, OpenAIEmbeddings, Vectors, minilm_dir
from auxen.kb.retrieval import fuse
from auxen.kb.store import ChunkStore, Hit
from auxen.outbound import embeddings_policy

ATTACHMENTS_TTL_S = 5.0
CANDIDATES_PER_LIST = 20  # each search's list length before fusion


class KnowledgeEngine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ChunkStore(settings.resolved_kb_uri, settings.kb_ann_threshold)
        self.embedder: MiniLM | OpenAIEmbeddings
        if settings.kb_embeddings_url:
            key = settings.kb_embeddings_api_key
            self.embedder = OpenAIEmbeddings(
                settings.kb_embeddings_url,
                settings.kb_embeddings_model or "sentence-transformers/all-MiniLM-L6-v2",
                key.get_secret_value() if key else None,
                settings.kb_embed_batch_size,
                embeddings_policy(settings),
            )
        else:
            self.embedder = MiniLM(settings.kb_embed_batch_size)
        self._chunker: Chunker | None = None
        self._attachments: dict[str, tuple[tuple[str, ...], float]] = {}

    @property
    def chunker(self) -> Chunker:
        # Chunks are sized in MiniLM's tokens whichever embedder runs: a
        # tokenizer.json is all it takes, and sizes stay comparable across backends.
        if self._chunker is None:
            self._chunker = Chunker(
                load_tokenizer(minilm_dir()),
                self.settings.kb_chunk_tokens,
                self.settings.kb_chunk_overlap_tokens,
            )
        return self._chunker

    async def ingest(self, workspace_id: str, kb_id: str, document_id: str, text: str) -> int:
        """Chunk, embed and store one document's text; returns its number of chunks."""
        return (await self.ingest_many(workspace_id, kb_id, [(document_id, text)]))[0]

    async def ingest_many(
        self, workspace_id: str, kb_id: str, documents: list[tuple[str, str]]
    ) -> list[int]:
        """Several documents at once: their chunks are embedded together, in full
        batches (small documents alone would make small, slow batches), then stored in
        one commit (the request is all or nothing). Returns each one's number of chunks."""
        split = await asyncio.to_thread(
            lambda: [[c.text for c in self.chunker.split(text)] for _, text in documents]
        )
        everything = [t for texts in split for t in texts]
        if not everything:
            return [0] * len(documents)
        vectors = await self.embedder.embed(everything)
        parts, start = [], 0
        for (document_id, _), texts in zip(documents, split, strict=True):
            parts.append((document_id, texts, vectors[start : start + len(texts)]))
            start += len(texts)
        await self.store.add(workspace_id, kb_id, parts)  # one commit for the request
        return [len(texts) for texts in split]

    async def embed_query(self, query: str) -> Vectors:
        vectors = await self.embedder.embed([query])
        first: Vectors = vectors[0]
        return first

    async def search(
        self, workspace_id: str, kb_ids: list[str], query: str, top_k: int
    ) -> list[tuple[Hit, float]]:
        """The top_k chunks of these knowledge bases for `query`, hybrid and fused."""
        if not kb_ids:
            return []
        vector = await self.embed_query(query)
        limit = max(CANDIDATES_PER_LIST, top_k * 2)
        answers = await asyncio.gather(
            *(self.store.search(workspace_id, kb, vector, query, limit) for kb in kb_ids)
        )
        lists = [hits for pair in answers for hits in pair]
        return fuse(lists, top_k)

    # -- which knowledge bases an instance retrieves from --------------------------------

    def cached_attachments(self, instance_id: str) -> tuple[str, ...] | None:
        cached = self._attachments.get(instance_id)
        if cached is None or cached[1] < time.monotonic():
            return None
        return cached[0]

    def cache_attachments(self, instance_id: str, kb_ids: tuple[str, ...]) -> None:
        self._attachments[instance_id] = (kb_ids, time.monotonic() + ATTACHMENTS_TTL_S)

    def forget_attachments(self, instance_id: str | None = None) -> None:
        if instance_id is None:
            self._attachments.clear()
        else:
            self._attachments.pop(instance_id, None)

    async def close(self) -> None:
        await self.embedder.close()
        self.store.close()
