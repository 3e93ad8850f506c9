"""Parsing a caller's JSON, one way for every endpoint (REST, the inference proxy, MCP).

Valid JSON can still be hostile: 100,000 nested lists make the decoder (and anything
that walks the result recursively) run out of stack, and a NUL character (`\\u0000`)
is a string SQLite stores and PostgreSQL refuses. `parse_json` refuses anything nested
deeper than `MAX_DEPTH`, and (unless the caller's text never reaches the database, as
with prompts) any key or string holding a NUL, with an InvalidArgument naming the field,
before any handler or validator sees it. Both walks are iterative.
"""

from __future__ import annotations

import json
from typing import Any

from auxen.tools.errors import InvalidArgument

# Deep enough for any real request (a JSON schema in a tool definition is rarely past 10).
MAX_DEPTH = 64


def parse_json(raw: bytes | bytearray | str, *, nul_ok: bool = False) -> Any:
    """The decoded value, or InvalidArgument for text that is not JSON, is nested deeper
    than MAX_DEPTH or (unless `nul_ok`) has a NUL character in a key or string."""
    try:
        value = json.loads(raw)
    except RecursionError as exc:
        raise too_deep() from exc
    except ValueError as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from exc
    if nesting_depth(value) > MAX_DEPTH:
        raise too_deep()
    escaped_nul = "\\u0000" if isinstance(raw, str) else b"\\u0000"
    if not nul_ok and escaped_nul in raw:  # type: ignore[operator]
        where = nul_path(value)
        if where is not None:
            raise InvalidArgument(
                f"{where} contains a NUL character (\\u0000), which cannot be stored; remove it",
                param=where,
            )
    return value


def nul_path(value: Any) -> str | None:
    """The dotted path of the first key or string holding a NUL character, or None."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return ".".join(path) or "body"
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    return ".".join((*path, key.replace("\x00", "\\u0000")))
                stack.append((child, (*path, key)))
        elif isinstance(item, list):
            stack.extend((child, (*path, str(n))) for n, child in enumerate(item))
    return None


def nesting_depth(value: Any) -> int:
    """How many lists/objects deep `value` goes (a scalar is 0), iteratively."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_DEPTH:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def too_deep() -> InvalidArgument:
    return InvalidArgument(
        f"request body is nested more than {MAX_DEPTH} levels deep (lists or objects "
        "inside each other); flatten it",
        param="body",
    )
