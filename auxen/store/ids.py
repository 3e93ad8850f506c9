"""Unguessable, prefixed object ids (`inst_...`, `ws_...`) so ids are safe to show and log."""

from __future__ import annotations

import secrets
import string

ALPHABET = string.ascii_letters + string.digits


def random_token(length: int) -> str:
    """`length` base62 characters from the OS CSPRNG (5.95 bits each)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def new_id(prefix: str) -> str:
    # 20 base62 characters carry 119 bits: ids cannot be enumerated or guessed.
    return f"{prefix}_{random_token(20)}"
