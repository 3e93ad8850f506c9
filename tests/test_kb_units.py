"""The knowledge-base parts on their own: chunking by structure and model tokens,
reciprocal-rank fusion, reading HTML, and MiniLM's vectors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from auxen.kb.chunking import Chunker, load_tokenizer
from auxen.kb.documents import extract_text, resolve_content_type
from auxen.kb.embeddings import MiniLM, minilm_dir
from auxen.kb.retrieval import fuse
from auxen.kb.store import Hit

TOKENIZER = load_tokenizer(minilm_dir())


def test_chunks_follow_headings_and_paragraphs_within_the_token_budget() -> None:
    chunker = Chunker(TOKENIZER, max_tokens=40, overlap=12)
    sentence = "The quick brown fox jumps over the lazy dog near the river bank."
    text = (
        "# Alpha\n\nShort intro.\n\n"
        + " ".join([sentence] * 6)
        + "\n\n## Beta\n\nA paragraph of its own.\n\nAnother one."
    )
    chunks = chunker.split(text)
    assert all(c.tokens <= 40 for c in chunks), [c.tokens for c in chunks]
    assert all(chunker.count(c.text) == c.tokens for c in chunks)
    # Every chunk says which section it is from; no chunk spans two sections.
    alpha = [c for c in chunks if c.text.startswith("# Alpha")]
    beta = [c for c in chunks if c.text.startswith("## Beta")]
    assert len(alpha) + len(beta) == len(chunks) and len(alpha) >= 3
    assert beta[0].text == "## Beta\n\nA paragraph of its own.\n\nAnother one."
    assert not any("Beta" in c.text for c in alpha)
    # A long paragraph is split between sentences, and neighbours overlap by a sentence.
    body = [c.text.removeprefix("# Alpha\n\n") for c in alpha[1:]]
    assert all(b.endswith(".") for b in body)
    assert any(
        sentence in alpha[i].text and sentence in alpha[i + 1].text
        for i in range(1, len(alpha) - 1)
    )
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_a_run_on_sentence_is_cut_into_windows() -> None:
    chunker = Chunker(TOKENIZER, max_tokens=32, overlap=0)
    chunks = chunker.split(" ".join(["word"] * 100))
    assert len(chunks) == 4 and sum(c.tokens for c in chunks) == 100


def test_reciprocal_rank_fusion_rewards_agreement() -> None:
    def hits(*ids: str) -> list[Hit]:
        return [Hit("kb_a", i, i.split(":")[0], 0, "", None) for i in ids]

    fused = fuse([hits("a:0", "b:0", "c:0"), hits("c:0", "a:0", "d:0")], top_k=3)
    assert [h.chunk_id for h, _ in fused] == ["a:0", "c:0", "b:0"]
    assert fused[0][1] == 1 / 61 + 1 / 62


def test_html_keeps_structure_and_drops_scripts() -> None:
    html = "<h2>Title</h2><p>One &amp; two</p><script>x()</script><ul><li>a</li><li>b</li></ul>"
    assert extract_text(html.encode(), "text/html", param="p") == "## Title\n\nOne & two\n\na\n\nb"
    assert resolve_content_type("application/octet-stream", "Notes.MD", "p") == "text/markdown"
    assert resolve_content_type(None, None, "p") == "text/plain"


def test_minilm_gives_normalised_384_dimension_vectors_that_mean_something() -> None:
    model = MiniLM(batch_size=8)
    vectors = model.encode_now(
        [
            "How do I reset my password?",
            "Steps to recover account access when you forgot your login secret",
            "Bananas are a yellow fruit",
        ]
    )
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > 0.5 > 0.2 > unrelated


def test_the_vector_index_grows_with_its_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built once the table passes the threshold, rebuilt with more partitions when the
    table doubles (rows added later join the partitions they find), never two at once."""
    from auxen.kb import store as store_module

    monkeypatch.setattr(store_module, "ROWS_PER_PARTITION", 100)
    chunks = store_module.ChunkStore(str(tmp_path / "kb"), ann_threshold=256)
    rng = np.random.default_rng(7)

    def rows(n: int) -> np.ndarray:
        vectors = rng.normal(size=(n, 384)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    async def vector_indexes() -> list[str]:
        table = await chunks._open("ws_units", "kb_units")
        return [i.name for i in await table.list_indices() if i.columns == ["vector"]]

    async def run() -> None:
        await chunks.add("ws_units", "kb_units", [("doc_a", ["a"] * 200, rows(200))])
        assert await vector_indexes() == []  # below the threshold: exact scans
        await chunks.add("ws_units", "kb_units", [("doc_b", ["b"] * 100, rows(100))])
        assert await vector_indexes() == ["vector_ivf3"]
        await chunks.add("ws_units", "kb_units", [("doc_c", ["c"] * 200, rows(200))])
        assert await vector_indexes() == ["vector_ivf3"]  # 5 wanted: not yet double
        await chunks.add("ws_units", "kb_units", [("doc_d", ["d"] * 150, rows(150))])
        assert await vector_indexes() == ["vector_ivf6"]
        probe = rows(1)[0]
        near, _ = await chunks.search("ws_units", "kb_units", probe, "", 5)
        assert len(near) == 5

    asyncio.run(run())
