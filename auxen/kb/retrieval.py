"""Hybrid retrieval and what the model is given.

Each knowledge base answers twice (nearest vectors, best full-text matches); the lists
are fused with reciprocal-rank fusion (Cormack et al., 2009): a chunk scores
sum(1 / (k + rank)) over the lists it appears in, so a chunk both searches rank well
wins, and scores from unlike scales (cosine, BM25) never need calibrating.
"""

from __future__ import annotations

from collections.abc import Sequence

from auxen.kb.store import Hit

RRF_K = 60


def fuse(ranked_lists: Sequence[Sequence[Hit]], top_k: int) -> list[tuple[Hit, float]]:
    """The top_k chunks over every list, best first, with their fused scores."""
    scores: dict[tuple[str, str], float] = {}
    best: dict[tuple[str, str], Hit] = {}
    for hits in ranked_lists:
        for rank, hit in enumerate(hits, start=1):
            key = (hit.knowledge_base_id, hit.chunk_id)
            scores[key] = scores.get(key, 0.0) + 1.0 / (RRF_K + rank)
            seen = best.get(key)
            if seen is None or (seen.similarity is None and hit.similarity is not None):
                best[key] = hit
    order = sorted(scores, key=lambda key: (-scores[key], key))
    return [(best[key], scores[key]) for key in order[:top_k]]


SOURCES_INSTRUCTION = (
    "Use the numbered sources below to answer the user's latest message when they are "
    "relevant, and cite them as [1], [2]. If they do not contain the answer, say so."
)


def sources_block(passages: Sequence[tuple[int, str, str]]) -> str:
    """(number, title, text) passages as the text given to the model."""
    lines = [SOURCES_INSTRUCTION, ""]
    for number, title, text in passages:
        lines.append(f"[{number}] {title}\n{text}\n")
    return "\n".join(lines).rstrip()
