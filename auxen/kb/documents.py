"""Reading uploaded documents into plain text: plain text, Markdown, HTML and PDF.

Documents are read in memory only (never spooled to disk). Anything that cannot be read
is an InvalidArgument naming the field, with what to do instead.
"""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser
from typing import ClassVar

from auxen.tools.errors import InvalidArgument

# content type -> the file name endings that imply it
SUPPORTED_TYPES: dict[str, tuple[str, ...]] = {
    "text/plain": (".txt", ".text"),
    "text/markdown": (".md", ".markdown"),
    "text/html": (".html", ".htm"),
    "application/pdf": (".pdf",),
}
_ALIASES = {"text/x-markdown": "text/markdown", "application/xhtml+xml": "text/html"}


def supported_list() -> str:
    return ", ".join(SUPPORTED_TYPES)


def resolve_content_type(content_type: str | None, filename: str | None, param: str) -> str:
    """The supported type a document is, from its declared type or its file name."""
    if content_type:
        base = content_type.split(";", 1)[0].strip().lower()
        base = _ALIASES.get(base, base)
        if base in SUPPORTED_TYPES:
            return base
        if base != "application/octet-stream" or not filename:
            raise InvalidArgument(
                f"unsupported content type {base[:100]!r}; supported: {supported_list()}",
                param=param,
            )
    if filename:
        lower = filename.lower()
        for kind, endings in SUPPORTED_TYPES.items():
            if lower.endswith(endings):
                return kind
        raise InvalidArgument(
            f"cannot tell the type of {filename[:100]!r} from its name; give content_type "
            f"as one of: {supported_list()}",
            param=param,
        )
    return "text/plain"


def extract_text(data: bytes, content_type: str, *, param: str) -> str:
    """The document's text, normalised (Unix newlines, no NULs). Blocking: PDFs are
    parsed in pure Python, so callers run this in a worker thread."""
    if not data:
        raise InvalidArgument("the document is empty", param=param)
    if content_type == "application/pdf":
        text = _pdf_text(data, param)
    else:
        try:
            raw = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"a {content_type} document must be UTF-8 text; for PDFs give "
                "content_type application/pdf",
                param=param,
            ) from None
        text = _html_text(raw) if content_type == "text/html" else raw
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    if not text.strip():
        raise InvalidArgument("the document has no text", param=param)
    return text


def _pdf_text(data: bytes, param: str) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    if not data.lstrip()[:5].startswith(b"%PDF-"):
        raise InvalidArgument("this is not a PDF (it does not start with %PDF-)", param=param)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise InvalidArgument(
                "the PDF is encrypted; upload a copy without a password", param=param
            )
        pages = [page.extract_text() or "" for page in reader.pages]
    except InvalidArgument:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            RecursionError, OSError, AssertionError):  # fmt: skip
        raise InvalidArgument(
            "the PDF is damaged or not a PDF pypdf can read", param=param
        ) from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise InvalidArgument(
            "the PDF has no extractable text (scanned pages need OCR first)", param=param
        )
    return text


_SPACES = re.compile(r"[ \t\f\v]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*")


class _TextOfHtml(HTMLParser):
    """Visible text of an HTML page, with headings kept as Markdown headings and block
    elements as paragraph breaks, so chunking sees the page's structure."""

    _SKIP = frozenset({"script", "style", "noscript", "template", "head", "svg"})
    _BLOCK = frozenset(
        {"p", "div", "section", "article", "li", "ul", "ol", "table", "tr", "br", "pre",
         "blockquote", "header", "footer", "main", "nav", "aside", "dd", "dt", "hr"}
    )  # fmt: skip
    _HEADINGS: ClassVar[dict[str, int]] = {f"h{i}": i for i in range(1, 7)}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._HEADINGS:
            self.parts.append("\n\n" + "#" * self._HEADINGS[tag] + " ")
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._HEADINGS or tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def _html_text(raw: str) -> str:
    parser = _TextOfHtml()
    parser.feed(raw)
    parser.close()
    text = "".join(parser.parts)
    text = _SPACES.sub(" ", text)
    return _BLANK_LINES.sub("\n\n", text).strip()
