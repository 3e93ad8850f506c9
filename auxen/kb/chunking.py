"""Splitting text into chunks sized in the embedding model's own tokens.

Chunks follow the document's structure: a Markdown heading starts a new chunk (and is
repeated at the top of the section's later chunks, so each chunk says what it is about),
paragraphs are kept whole when they fit, long paragraphs are split between sentences,
and only a sentence longer than a chunk is cut mid-way. Consecutive chunks of a section
overlap by up to `overlap` tokens of whole sentences or paragraphs.

The model's WordPiece tokenizer splits on whitespace first, so the token count of
pieces joined by blank lines is the sum of their counts: packing never re-tokenizes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

_HEADING = re.compile(r"^#{1,6}\s+\S")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+(?=\S)")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    text: str
    tokens: int


@dataclass(frozen=True)
class _Piece:
    text: str
    tokens: int
    heading: bool = False


def load_tokenizer(model_dir: Path) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # The model's file pads and truncates to 128 for training; counting needs neither.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


class Chunker:
    def __init__(self, tokenizer: Tokenizer, max_tokens: int, overlap: int) -> None:
        if not 0 <= overlap < max_tokens:
            raise ValueError("overlap must be smaller than the chunk size")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap = overlap

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def split(self, text: str) -> list[Chunk]:
        chunks: list[list[_Piece]] = []
        current: list[_Piece] = []
        heading: _Piece | None = None

        def size(pieces: list[_Piece]) -> int:
            return sum(p.tokens for p in pieces)

        def flush(carry: bool) -> None:
            nonlocal current
            if not current or all(p.heading for p in current):
                return
            chunks.append(current)
            tail: list[_Piece] = []
            if carry and self.overlap:
                for piece in reversed(current):
                    if piece.heading or size(tail) + piece.tokens > self.overlap:
                        break
                    tail.insert(0, piece)
            lead = [heading] if heading is not None else []
            current = lead + tail if size(lead + tail) < self.max_tokens // 2 else lead

        for piece in self._pieces(text):
            if piece.heading:
                flush(carry=False)
                heading = piece if piece.tokens <= self.max_tokens // 4 else None
                current = [piece]
                continue
            if current and size(current) + piece.tokens > self.max_tokens:
                flush(carry=True)
                while current and size(current) + piece.tokens > self.max_tokens:
                    current.pop()  # the overlap, then the heading, give way to new text
            current.append(piece)
        flush(carry=False)
        return [
            Chunk(ordinal=i, text="\n\n".join(p.text for p in pieces), tokens=size(pieces))
            for i, pieces in enumerate(chunks)
        ]

    def _pieces(self, text: str) -> list[_Piece]:
        """Headings, paragraphs, and sentences or token windows of paragraphs too long
        for one chunk, in document order."""
        pieces: list[_Piece] = []
        for block in _PARAGRAPH_BREAK.split(text):
            lines: list[str] = []
            for line in block.split("\n"):
                if _HEADING.match(line.strip()):
                    if lines:
                        pieces += self._paragraph("\n".join(lines))
                        lines = []
                    heading = " ".join(line.split())
                    pieces.append(_Piece(heading, self.count(heading), heading=True))
                else:
                    lines.append(line)
            if lines:
                pieces += self._paragraph("\n".join(lines))
        return pieces

    def _paragraph(self, paragraph: str) -> list[_Piece]:
        paragraph = paragraph.strip()
        if not paragraph:
            return []
        tokens = self.count(paragraph)
        if tokens <= self.max_tokens:
            return [_Piece(paragraph, tokens)]
        out: list[_Piece] = []
        for sentence in _SENTENCE_END.split(paragraph):
            n = self.count(sentence)
            if n <= self.max_tokens:
                out.append(_Piece(sentence, n))
            else:
                out += self._windows(sentence)
        return out

    def _windows(self, text: str) -> list[_Piece]:
        """A run-on sentence cut into chunk-sized windows at token boundaries."""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        offsets = encoding.offsets
        out = []
        for start in range(0, len(offsets), self.max_tokens):
            end = min(start + self.max_tokens, len(offsets))
            piece = text[offsets[start][0] : offsets[end - 1][1]].strip()
            if piece:
                out.append(_Piece(piece, self.count(piece)))
        return out
