"""Links that prove a person reads mail at their address.

A link carries a sealed token (see `SealedTokens`): the account, the address it was sent
to, where to go afterwards and, when it answers a second sign-up of an account not yet
confirmed, the argon2 hash of the password given then. The token exists only in the
email (never in the database), opens only under this deployment's master key, and
expires after `TTL_S`. Following it confirms the address; with a password hash inside,
it also makes that the account's password, so whoever signed up first with someone
else's address (hoping to hold the account once its owner confirms it) loses it the
moment the owner does.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from auxen.auth.sealing import SealedTokens

TTL_S = 48 * 3600
PURPOSE = "email address proof"


@dataclass(frozen=True)
class Proof:
    user_id: str
    email: str
    next_url: str
    password_hash: str | None = None

    def __repr__(self) -> str:
        return f"Proof(user_id={self.user_id!r})"


def issue_link(master_key: bytes, base_url: str, proof: Proof) -> str:
    payload = {"user_id": proof.user_id, "email": proof.email, "next": proof.next_url}
    if proof.password_hash is not None:
        payload["password_hash"] = proof.password_hash
    token = SealedTokens(master_key, PURPOSE).issue(payload, TTL_S)
    return f"{base_url}/signup/confirm?{urlencode({'token': token})}"


def open_token(master_key: bytes, token: str | None) -> Proof | None:
    """The proof a link's token carries, or None if forged, tampered with or expired."""
    payload = SealedTokens(master_key, PURPOSE).open(token)
    if payload is None:
        return None
    user_id, email, next_url = payload.get("user_id"), payload.get("email"), payload.get("next")
    password_hash = payload.get("password_hash")
    if not (isinstance(user_id, str) and isinstance(email, str) and isinstance(next_url, str)):
        return None
    return Proof(
        user_id, email, next_url, password_hash if isinstance(password_hash, str) else None
    )
