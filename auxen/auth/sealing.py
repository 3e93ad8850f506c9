"""Sealing secrets at rest with XSalsa20-Poly1305 (PyNaCl `SecretBox`).

Each workspace gets its own key, derived from the master key with keyed BLAKE2b over
the workspace id, so one workspace's key can never open another workspace's secrets.
A person's own secrets (their TOTP seed) are sealed the same way under a key derived
from their user id: they belong to the person, whichever workspaces they are in.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from nacl.encoding import RawEncoder
from nacl.exceptions import CryptoError
from nacl.hash import blake2b
from nacl.secret import SecretBox


class UnsealError(RuntimeError):
    """Ciphertext was tampered with, or sealed under another key."""


def workspace_key(master_key: bytes, workspace_id: str) -> bytes:
    return bytes(
        blake2b(
            workspace_id.encode(),
            digest_size=SecretBox.KEY_SIZE,
            key=master_key,
            person=b"auxen-ws-seal",
            encoder=RawEncoder,
        )
    )


def seal(master_key: bytes, workspace_id: str, plaintext: str) -> bytes:
    box = SecretBox(workspace_key(master_key, workspace_id))
    return bytes(box.encrypt(plaintext.encode()))


def unseal(master_key: bytes, workspace_id: str, sealed: bytes) -> str:
    box = SecretBox(workspace_key(master_key, workspace_id))
    try:
        return bytes(box.decrypt(sealed)).decode()
    except CryptoError as exc:
        raise UnsealError("sealed value cannot be opened with this workspace's key") from exc


class SealedTokens:
    """Short-lived, tamper-proof tokens that carry their own state (a pending
    authorization request, a half-finished sign-in, a TOTP secret being enrolled), sealed
    under a key derived from the master key for one purpose, so a token minted for one
    purpose never opens as another."""

    def __init__(self, master_key: bytes, purpose: str) -> None:
        key = blake2b(
            purpose.encode(),
            digest_size=SecretBox.KEY_SIZE,
            key=master_key,
            person=b"auxen-tokens",
            encoder=RawEncoder,
        )
        self._box = SecretBox(bytes(key))

    def issue(self, payload: dict[str, Any], ttl_s: int) -> str:
        body = json.dumps({**payload, "expires": int(time.time()) + ttl_s}).encode()
        return base64.urlsafe_b64encode(bytes(self._box.encrypt(body))).decode().rstrip("=")

    def open(self, token: str | None) -> dict[str, Any] | None:
        """The payload, or None if the token is forged, tampered with or expired."""
        if not token or len(token) > 8192:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            payload = json.loads(self._box.decrypt(raw))
        except (ValueError, CryptoError, TypeError):
            return None
        if not isinstance(payload, dict):
            return None
        expires = payload.get("expires")
        if not isinstance(expires, int) or expires < time.time():
            return None
        return payload
