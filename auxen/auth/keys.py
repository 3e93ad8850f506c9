"""API keys: `auxen_live_` / `auxen_test_` act for a workspace; `auxk_` for one instance.

A key is `<prefix><key id: 16 chars><secret: 32 chars>` in base62. The key id is the
primary key of its row, so lookup is one indexed read; the secret carries 190 bits and
only the SHA-256 of the whole key is stored (the secret is random, so a slow hash adds
nothing). Comparison is constant-time and a miss costs the same comparison, so response
times do not reveal which key ids exist.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from auxen.store.ids import ALPHABET, random_token
from auxen.store.models import KeyKind

LIVE_PREFIX = "auxen_live_"
TEST_PREFIX = "auxen_test_"
INSTANCE_PREFIX = "auxk_"
KEY_ID_LENGTH = 16
SECRET_LENGTH = 32
_DUMMY_HASH = hashlib.sha256(b"auxen-dummy-key").digest()


@dataclass(frozen=True)
class NewKey:
    """A freshly minted key: `plaintext` is shown to the caller once and never stored."""

    key_id: str
    plaintext: str
    secret_hash: bytes
    display_prefix: str


@dataclass(frozen=True)
class ParsedKey:
    key_id: str
    kind: KeyKind
    livemode: bool | None  # None for instance keys: they inherit their instance's mode
    plaintext: str


def mint_key(kind: KeyKind, *, livemode: bool, seed: bytes | None = None) -> NewKey:
    """A new random key; with `seed` (a secret of at least 32 bytes), the one key that
    seed always gives, so a request that must answer the same key again can mint it
    again instead of storing it (see `auxen.tools.instances`)."""
    if kind is KeyKind.INSTANCE:
        prefix = INSTANCE_PREFIX
    else:
        prefix = LIVE_PREFIX if livemode else TEST_PREFIX
    if seed is None:
        key_id, secret = random_token(KEY_ID_LENGTH), random_token(SECRET_LENGTH)
    else:
        key_id, secret = (
            _derived_token(seed, b"id", KEY_ID_LENGTH),
            _derived_token(seed, b"secret", SECRET_LENGTH),
        )
    plaintext = prefix + key_id + secret
    return NewKey(
        key_id=key_id,
        plaintext=plaintext,
        secret_hash=hash_key(plaintext),
        display_prefix=plaintext[: len(prefix) + 6] + "…",
    )


def _derived_token(seed: bytes, label: bytes, length: int) -> str:
    """`length` base62 characters drawn from HMAC-SHA256(seed, label, counter), without
    modulo bias (bytes past the last whole multiple of 62 are skipped)."""
    chars: list[str] = []
    counter = 0
    while len(chars) < length:
        block = hmac.new(seed, label + counter.to_bytes(4, "big"), hashlib.sha256).digest()
        chars.extend(ALPHABET[b % 62] for b in block if b < 248)
        counter += 1
    return "".join(chars[:length])


def hash_key(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode()).digest()


def parse_key(plaintext: str) -> ParsedKey | None:
    """Split a presented key into its parts; None if it is not shaped like an Auxen key."""
    for prefix, kind, livemode in (
        (LIVE_PREFIX, KeyKind.ACCOUNT, True),
        (TEST_PREFIX, KeyKind.ACCOUNT, False),
        (INSTANCE_PREFIX, KeyKind.INSTANCE, None),
    ):
        if plaintext.startswith(prefix):
            body = plaintext[len(prefix) :]
            if len(body) != KEY_ID_LENGTH + SECRET_LENGTH or not set(body) <= _ALPHABET_SET:
                return None
            return ParsedKey(body[:KEY_ID_LENGTH], kind, livemode, plaintext)
    return None


def key_matches(presented: str, stored_hash: bytes | None) -> bool:
    """Constant-time check; with no stored hash it still does the same work, then fails."""
    expected = stored_hash if stored_hash is not None else _DUMMY_HASH
    ok = hmac.compare_digest(hash_key(presented), expected)
    return ok and stored_hash is not None


_ALPHABET_SET = frozenset(ALPHABET)
