"""Logging that cannot leak: every record passes a redaction filter before any handler
writes it, and the server logs no request bodies (no access log, no body in any message).

The filter removes what must never reach a log even by accident: Auxen keys and tokens,
provider secrets, bearer credentials, passwords in URLs, and the input values that
validation errors quote (which could be a caller's prompt). Content (prompts,
completions, retrieved text) is kept out by construction; tests/test_zero_retention.py
searches the logs for a marker sent in every journey.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
_SECRET = r"[A-Za-z0-9_\-]{8,}"
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Auxen account and instance keys, OAuth access/refresh tokens, webhook secrets.
    (re.compile(r"\b(auxen_(?:live|test)_|auxk_|auxo_|auxr_|whsec_)" + _SECRET), r"\1" + REDACTED),
    # Provider secrets: Hugging Face, RunPod, Stripe, OpenAI-style keys.
    (re.compile(r"\b(hf_|rpa_|[sr]k_live_|[sr]k_test_|sk-)" + _SECRET), r"\1" + REDACTED),
    # Authorization header values and bearer tokens anywhere.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}"), r"\1 " + REDACTED),
    (
        re.compile(r"(?i)(authorization|cookie|x-api-key)(['\"]?\s*[:=]\s*['\"]?)[^'\",}\s]+"),
        r"\1\2" + REDACTED,
    ),
    # user:password@ in URLs (matched from the literal "://", which keeps it linear).
    (re.compile(r"://(?<=[A-Za-z0-9+.\-]://)[^/\s:@]+:[^/\s@]+@"), "://" + REDACTED + "@"),
    # What pydantic quotes of a refused input (could be a prompt).
    (re.compile(r"input_value=.*?(?=, input_type=|$)", re.MULTILINE), "input_value=" + REDACTED),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Formats each record's message (and traceback) once, redacted, so no handler ever
    sees the raw arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the template only
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """Root logging for `auxen serve` / `auxen mcp`: one stderr handler with the
    redaction filter; uvicorn's loggers propagate to it (it is run with log_config=None)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # request lines: never logged
