"""Turning a presented bearer key into a `Caller`.

An account key acts for the person who made it: the lookup reads the key and its
creator's membership in the key's workspace together, and the caller's role is the lower
of the two (`permissions.effective_role`); a key whose creator has left, or that was
disabled, does not authenticate.

Verified keys are cached for a few seconds so the inference hot path does not read the
database on every request. Revoking a key, destroying its instance, or changing a
person's role or membership in this process drops the entries at once; other processes
see it within `CACHE_TTL_S`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import col, select
from starlette.requests import Request

from auxen.auth.keys import hash_key, key_matches, parse_key
from auxen.httputil import bearer
from auxen.store.db import Database
from auxen.store.models import ApiKey, KeyKind, Membership, Role
from auxen.tools.context import Caller, effective_role
from auxen.tools.errors import Unauthenticated

log = logging.getLogger(__name__)

CACHE_TTL_S = 5.0
LAST_USED_RESOLUTION_S = 60.0


class KeyAuthenticator:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[bytes, tuple[Caller, float]] = {}
        self._last_used_written: dict[str, float] = {}
        self._pending: set[asyncio.Task[None]] = set()

    async def authenticate(self, token: str | None) -> Caller:
        if not token:
            raise Unauthenticated("missing API key: send `Authorization: Bearer <key>`")
        now = time.monotonic()
        digest = hash_key(token)  # the cache never holds a key in clear
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            self._touch(cached[0], now)
            return cached[0]
        parsed = parse_key(token)
        row: ApiKey | None = None
        creator_role: Role | None = None
        if parsed is not None:
            async with self.db.system() as session:
                found = (
                    await session.exec(
                        select(ApiKey, Membership.role)
                        .outerjoin(
                            Membership,
                            sa.and_(
                                col(Membership.workspace_id) == col(ApiKey.workspace_id),
                                col(Membership.user_id) == col(ApiKey.created_by_user_id),
                            ),
                        )
                        .where(col(ApiKey.id) == parsed.key_id)
                    )
                ).first()
            if found is not None:
                row, creator_role = found[0], (Role(found[1]) if found[1] else None)
        valid = key_matches(token, row.secret_hash if row is not None else None)
        if parsed is None or row is None or not valid or row.kind is not parsed.kind:
            raise Unauthenticated("invalid API key")
        if row.revoked_at is not None:
            raise Unauthenticated("this API key has been revoked")
        if row.disabled_at is not None:
            raise Unauthenticated(f"this API key was disabled ({disabled_why(row)})")
        role = row.role
        if row.kind is KeyKind.ACCOUNT:
            acting = effective_role(
                row.role, creator_role, has_creator=row.created_by_user_id is not None
            )
            if acting is None:
                raise Unauthenticated(
                    "this API key was disabled (the person who created it is no longer in "
                    "the workspace)"
                )
            role = acting
        caller = Caller(
            workspace_id=row.workspace_id,
            livemode=row.livemode,
            key_id=row.id,
            key_kind=row.kind,
            instance_id=row.instance_id,
            key_creator_id=row.created_by_user_id,
            role=role,
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (caller, now + CACHE_TTL_S)
        self._touch(caller, now)
        return caller

    async def for_request(self, request: Request) -> Caller:
        """The caller of an HTTP request: its bearer key, and where it came from."""
        caller = await self.authenticate(bearer(request))
        return with_origin(caller, request)

    def forget_key(self, key_id: str) -> None:
        for digest, (caller, _) in list(self._cache.items()):
            if caller.key_id == key_id:
                del self._cache[digest]

    def forget_workspace(self, workspace_id: str) -> None:
        for digest, (caller, _) in list(self._cache.items()):
            if caller.workspace_id == workspace_id:
                del self._cache[digest]

    def forget_instance(self, instance_id: str) -> None:
        for digest, (caller, _) in list(self._cache.items()):
            if caller.instance_id == instance_id:
                del self._cache[digest]

    def _touch(self, caller: Caller, now: float) -> None:
        """Record last use, at most once a minute per key, off the request path."""
        assert caller.key_id is not None
        if now - self._last_used_written.get(caller.key_id, -1e9) < LAST_USED_RESOLUTION_S:
            return
        self._last_used_written[caller.key_id] = now
        task = asyncio.create_task(self._write_last_used(caller.key_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write_last_used(self, key_id: str) -> None:
        try:
            async with self.db.system() as session:
                await session.exec(
                    sa.update(ApiKey)
                    .where(col(ApiKey.id) == key_id)
                    .values(last_used_at=datetime.now(UTC))
                )
                await session.commit()
        except Exception:
            log.exception("could not record last use of key %s", key_id)

    async def close(self) -> None:
        await asyncio.gather(*self._pending, return_exceptions=True)


DISABLED_REASONS = {
    "creator_removed": "the person who created it was removed from the workspace",
}


def disabled_why(key: ApiKey) -> str:
    reason = key.disabled_reason or ""
    return DISABLED_REASONS.get(reason, reason or "disabled")


def with_origin(caller: Caller, request: Request) -> Caller:
    """`caller` with the request's client address and (truncated) user agent, for the
    audit log."""
    agent = request.headers.get("user-agent")
    return replace(
        caller,
        address=request.client.host if request.client else None,
        user_agent=agent[:200] if agent else None,
    )
