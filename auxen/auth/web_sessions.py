"""Signed-in browsers: an opaque token in a cookie, its SHA-256 in `web_session`.

Cookies are `__Host-` prefixed, Secure, HttpOnly and SameSite=Lax whenever the public URL
is https (browsers only keep `__Host-`/Secure cookies over https); on a plain-http
development server the same cookies go without the prefix and the Secure flag.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import col

from auxen.config import Settings
from auxen.store.db import Database
from auxen.store.models import User, WebSession, as_utc

SESSION_TTL = timedelta(hours=12)
IDLE_TIMEOUT = timedelta(hours=2)
TOUCH_RESOLUTION = timedelta(minutes=1)


def secure_cookies(settings: Settings) -> bool:
    return settings.base_url.startswith("https://")


def cookie_name(settings: Settings, name: str) -> str:
    return f"__Host-{name}" if secure_cookies(settings) else name


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def start(db: Database, user_id: str) -> str:
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    async with db.system() as session:
        session.add(
            WebSession(
                token_hash=_hash(token),
                user_id=user_id,
                created_at=now,
                last_seen_at=now,
                expires_at=now + SESSION_TTL,
            )
        )
        await session.commit()
    return token


async def user_for(db: Database, token: str | None) -> User | None:
    """The signed-in user of `token`, or None (unknown, expired or idle too long)."""
    if not token or len(token) > 100:
        return None
    now = datetime.now(UTC)
    async with db.system() as session:
        row = await session.get(WebSession, _hash(token))
        if row is None:
            return None
        if as_utc(row.expires_at) <= now or now - as_utc(row.last_seen_at) > IDLE_TIMEOUT:
            await session.delete(row)
            await session.commit()
            return None
        if now - as_utc(row.last_seen_at) > TOUCH_RESOLUTION:
            row.last_seen_at = now
            session.add(row)
            await session.commit()
        return await session.get(User, row.user_id)


async def end(db: Database, token: str | None) -> None:
    if not token:
        return
    async with db.system() as session:
        await session.exec(sa.delete(WebSession).where(col(WebSession.token_hash) == _hash(token)))
        await session.commit()


async def end_others(db: Database, user_id: str, keep: str | None) -> None:
    """Sign the person out everywhere but the browser holding `keep` (after a password
    change, a stolen session must not outlive the old password)."""
    async with db.system() as session:
        query = sa.delete(WebSession).where(col(WebSession.user_id) == user_id)
        if keep:
            query = query.where(col(WebSession.token_hash) != _hash(keep))
        await session.exec(query)
        await session.commit()
