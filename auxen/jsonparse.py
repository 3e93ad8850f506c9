"""Parsing a caller's JSON, one way for every endpoint (REST, the inference proxy, MCP).

Valid JSON can still be hostile: 100,000 nested lists make the decoder (and anything
that walks the result recursively) run out of stack. `parse_json` refuses anything
nested deeper than `MAX_DEPTH` with an InvalidArgument that says so, before any handler
or validator sees it. The depth is measured without recursion.
"""

from __future__ import annotations

import json
from typing import Any

from auxen.tools.errors import InvalidArgument

# Deep enough for any real request (a JSON schema in a tool definition is rarely past 10).
MAX_DEPTH = 64


def parse_json(raw: bytes | bytearray | str) -> Any:
    """The decoded value, or InvalidArgument for text that is not JSON or is nested
    deeper than MAX_DEPTH."""
    try:
        value = json.loads(raw)
    except RecursionError as exc:
        raise too_deep() from exc
    except ValueError as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from exc
    if nesting_depth(value) > MAX_DEPTH:
        raise too_deep()
    return value


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
