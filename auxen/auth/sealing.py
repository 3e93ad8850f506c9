"""Sealing secrets at rest with XSalsa20-Poly1305 (PyNaCl `SecretBox`).

Each workspace gets its own key, derived from the master key with keyed BLAKE2b over
the workspace id, so one workspace's key can never open another workspace's secrets.
"""

from __future__ import annotations

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
