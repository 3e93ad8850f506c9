"""Brute-force protection (sign-in, second factor, token endpoint) per account and per
client address, and plain rate limits (client registration).

After a few failures each further attempt must wait longer (1 s, 2 s, 4 s, ... up to a
minute), and after many the subject is locked out for a while. The waits are enforced
by refusing early attempts with 429 and `Retry-After`, never by sleeping in the handler;
an attempt made while told to wait counts as a failure, so hammering locks out sooner.
Counters live in the database, so every server process sees the same ones; failures are
counted with one atomic upsert.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select

from auxen.store.db import Database
from auxen.store.models import AuthThrottle, as_utc
from auxen.tools.errors import RateLimited


@dataclass(frozen=True)
class Policy:
    free_failures: int  # failures before any wait
    lockout_after: int  # failures that lock the subject out
    lockout: timedelta
    window: timedelta  # failures older than this are forgotten
    max_delay_s: int = 60


ACCOUNT = Policy(free_failures=3, lockout_after=10, lockout=timedelta(minutes=15),
                 window=timedelta(minutes=15))  # fmt: skip
# A client failing to authenticate at the token endpoint (a guessed secret).
CLIENT = Policy(free_failures=5, lockout_after=20, lockout=timedelta(minutes=15),
                window=timedelta(minutes=15))  # fmt: skip
ADDRESS = Policy(free_failures=10, lockout_after=50, lockout=timedelta(minutes=15),
                 window=timedelta(minutes=15))  # fmt: skip


def too_many_attempts(retry_after_s: int) -> RateLimited:
    return RateLimited(
        f"too many failed attempts; try again in {retry_after_s} seconds",
        retry_after_s=retry_after_s,
    )


class Throttle:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def check(self, subjects: dict[str, Policy]) -> None:
        """Raise TooManyAttempts if any subject must still wait."""
        now = datetime.now(UTC)
        async with self.db.system() as session:
            rows = (
                await session.exec(
                    select(AuthThrottle).where(col(AuthThrottle.key).in_(list(subjects)))
                )
            ).all()
        wait = 0.0
        for row in rows:
            policy = subjects[row.key]
            last = as_utc(row.last_failure_at)
            if now - last > policy.window and (
                row.locked_until is None or as_utc(row.locked_until) <= now
            ):
                continue
            if row.locked_until is not None and as_utc(row.locked_until) > now:
                wait = max(wait, (as_utc(row.locked_until) - now).total_seconds())
            elif row.failures >= policy.free_failures:
                delay = min(2 ** (row.failures - policy.free_failures), policy.max_delay_s)
                wait = max(wait, (last + timedelta(seconds=delay) - now).total_seconds())
        if wait > 0:
            raise too_many_attempts(max(1, round(wait + 0.49)))

    async def admit(self, subjects: dict[str, Policy]) -> None:
        """Like check(), but an attempt made while told to wait counts as a failure, so
        hammering locks the subject out sooner; the refusal says the new wait."""
        try:
            await self.check(subjects)
        except RateLimited as limited:
            await self.failed(subjects)
            await self.check(subjects)
            raise limited from None

    async def failed(self, subjects: dict[str, Policy]) -> None:
        now = datetime.now(UTC)
        async with self.db.engine.begin() as conn:
            dialect = conn.dialect.name
            for key, policy in subjects.items():
                insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(
                    AuthThrottle
                )
                table = AuthThrottle.__table__  # type: ignore[attr-defined]
                stale = table.c.last_failure_at < now - policy.window
                failures = sa.case((stale, 1), else_=table.c.failures + 1)
                await conn.execute(
                    insert.values(key=key, failures=1, last_failure_at=now).on_conflict_do_update(
                        index_elements=["key"],
                        set_={"failures": failures, "last_failure_at": now},
                    )
                )
                await conn.execute(
                    sa.update(table)
                    .where(table.c.key == key, table.c.failures >= policy.lockout_after)
                    .values(locked_until=now + policy.lockout, failures=0)
                )

    async def spend(self, key: str, *, limit: int, window: timedelta) -> None:
        """A plain rate limit: at most `limit` attempts per `window` for `key` (a fixed
        window that starts with its first attempt); one atomic upsert per attempt."""
        now = datetime.now(UTC)
        table = AuthThrottle.__table__  # type: ignore[attr-defined]
        async with self.db.engine.begin() as conn:
            insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(
                AuthThrottle
            )
            stale = table.c.last_failure_at < now - window
            counted = await conn.execute(
                insert.values(key=key, failures=1, last_failure_at=now)
                .on_conflict_do_update(
                    index_elements=["key"],
                    set_={
                        "failures": sa.case((stale, 1), else_=table.c.failures + 1),
                        "last_failure_at": sa.case((stale, now), else_=table.c.last_failure_at),
                    },
                )
                .returning(table.c.failures, table.c.last_failure_at)
            )
            attempts, started = counted.one()
        if attempts > limit:
            wait = (as_utc(started) + window - now).total_seconds()
            raise RateLimited(
                f"too many requests; try again in {max(1, round(wait + 0.49))} seconds",
                retry_after_s=max(1, round(wait + 0.49)),
            )

    async def succeeded(self, key: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(sa.delete(AuthThrottle).where(col(AuthThrottle.key) == key))
