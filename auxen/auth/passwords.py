"""Passwords: argon2id (argon2-cffi's defaults: 64 MiB, 3 passes), hashed off the event
loop. A sign-in for an unknown email still runs one verification, so timing does not
tell which emails have accounts."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from auxen.tools.errors import InvalidArgument

MIN_LENGTH = 10
MAX_LENGTH = 1024

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("not-a-real-password-but-a-timing-equaliser")


def check_strength(password: str, *, email: str) -> None:
    if len(password) < MIN_LENGTH:
        raise InvalidArgument(
            f"the password must be at least {MIN_LENGTH} characters", param="password"
        )
    if len(password) > MAX_LENGTH:
        raise InvalidArgument(
            f"the password must be at most {MAX_LENGTH} characters", param="password"
        )
    if password.strip().lower() == email.strip().lower():
        raise InvalidArgument("the password must not be your email address", param="password")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(stored: str | None, password: str) -> bool:
    """True when `password` matches `stored`; a missing hash costs the same time."""

    def verify() -> bool:
        try:
            return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)
