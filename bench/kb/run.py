"""bench/kb: knowledge-base ingest throughput against the embedding model's raw encode
throughput, and retrieval latency at 1k, 10k and 100k chunks against an exact
in-memory scan, all in one run. See bench/README.md.

    .venv/bin/python bench/kb/run.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from auxen.config import Settings
from auxen.kb.service import KnowledgeEngine

HERE = Path(__file__).resolve().parent
SET = json.loads((HERE.parent.parent / "tests/data/kb_quality.json").read_text())
RESULTS = HERE.parent / "results" / "kb.json"


def corpus(n_docs: int) -> list[str]:
    """Documents built from the labelled set's sections, varied so none repeats."""
    sections = [s for text in SET["documents"].values() for s in text.split("\n\n")]
    docs = []
    for i in range(n_docs):
        picked = [sections[(i * 7 + j * 3) % len(sections)] for j in range(12)]
        docs.append(
            f"# Handbook part {i}\n\n"
            + "\n\n".join(f"{p} (ref {i}-{j})" for j, p in enumerate(picked))
        )
    return docs


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def ingest_vs_encode(engine: KnowledgeEngine, docs: list[str], rounds: int) -> dict[str, Any]:
    chunk_texts = [c.text for d in docs for c in engine.chunker.split(d)]
    engine.embedder.encode_now(["warm up"])  # type: ignore[union-attr]
    encode_rates, ingest_rates = [], []
    for r in range(rounds):
        started = time.perf_counter()
        engine.embedder.encode_now(chunk_texts)  # type: ignore[union-attr]
        encode_rates.append(len(chunk_texts) / (time.perf_counter() - started))
        # One add_documents request's worth: chunk, embed (batched across documents),
        # one commit per document, index upkeep.
        started = time.perf_counter()
        counts = await engine.ingest_many(
            "ws_bench", f"kb_ingest{r}", [(f"doc_{i}", text) for i, text in enumerate(docs)]
        )
        ingest_rates.append(sum(counts) / (time.perf_counter() - started))
    encode, ingest = max(encode_rates), max(ingest_rates)
    return {
        "documents": len(docs),
        "chunks": len(chunk_texts),
        "raw_encode_chunks_per_s": round(encode, 1),
        "ingest_chunks_per_s": round(ingest, 1),
        "ingest_over_encode": round(ingest / encode, 3),
    }


async def retrieval(engine: KnowledgeEngine, size: int, queries: int) -> dict[str, Any]:
    """A table of `size` chunks: real chunk texts and embeddings, repeated with their
    vectors jittered (embedding 100k chunks for real would take about an hour here)."""
    base_texts = [c.text for d in corpus(40) for c in engine.chunker.split(d)]
    base = await engine.embedder.embed(base_texts)
    rng = np.random.default_rng(size)
    kb = f"kb_size{size}"
    vectors_all = []
    for start in range(0, size, 10_000):
        n = min(10_000, size - start)
        idx = np.arange(start, start + n) % len(base)
        vectors = base[idx] + rng.normal(0, 0.03, (n, base.shape[1])).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        texts = [f"{base_texts[i]} [copy {start + k}]" for k, i in enumerate(idx)]
        await engine.store.add("ws_bench", kb, [(f"doc_batch{start}", texts, vectors)])
        vectors_all.append(vectors)
    matrix = np.concatenate(vectors_all)
    questions = [q for q, _ in SET["questions"]]
    qvecs = [await engine.embed_query(q) for q in questions]
    full, store_only, exact, embed, recall = [], [], [], [], []
    for i in range(queries):
        q, v = questions[i % len(questions)], qvecs[i % len(qvecs)]
        t = time.perf_counter()
        await engine.embed_query(q)
        embed.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        by_vector, _ = await engine.store.search("ws_bench", kb, v, q, 20)
        store_only.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        await engine.search("ws_bench", [kb], q, 5)
        full.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        scores = matrix @ v
        true_top = np.argpartition(-scores, 20)[:20]
        exact.append((time.perf_counter() - t) * 1000)
        # Row i of the matrix is chunk (i % 10 000) of document doc_batch<i - i % 10 000>.
        found = {int(h.document_id.removeprefix("doc_batch")) + h.ordinal for h in by_vector}
        recall.append(len(found & set(true_top.tolist())) / 20)
    table = await engine.store._open("ws_bench", kb)
    indexes = sorted(i.index_type for i in await table.list_indices())
    p50 = statistics.median
    return {
        "chunks": size,
        "indexes": indexes,
        "hybrid_search_p50_ms": round(p50(store_only), 2),
        "hybrid_search_p99_ms": round(pct(store_only, 0.99), 2),
        "with_query_embedding_p50_ms": round(p50(full), 2),
        "with_query_embedding_p99_ms": round(pct(full, 0.99), 2),
        "query_embedding_p50_ms": round(p50(embed), 2),
        "exact_numpy_vector_scan_p50_ms": round(p50(exact), 3),
        "hybrid_over_exact_scan_p50": round(p50(store_only) / p50(exact), 2),
        "vector_recall_at_20_vs_exact": round(statistics.mean(recall), 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="auxen-bench-kb-"))
    engine = KnowledgeEngine(Settings(data_dir=root))
    try:
        result: dict[str, Any] = {
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, "
            f"Python {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d"),
            "ann_threshold": engine.settings.kb_ann_threshold,
        }
        result["ingest"] = await ingest_vs_encode(
            engine, corpus(8 if args.quick else 48), 1 if args.quick else 2
        )
        print(json.dumps(result["ingest"]))
        sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
        result["retrieval"] = []
        for size in sizes:
            row = await retrieval(engine, size, 100 if args.quick else 300)
            print(json.dumps(row))
            result["retrieval"].append(row)
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        await engine.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
