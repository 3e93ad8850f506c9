"""Brute-force protection (sign-in, second factor, recovery codes, password changes, the
token endpoint) per account and per client address, and plain rate limits (client
registration, sign-up).

After a few failures each further attempt must wait longer (1 s, 2 s, 4 s, ... up to a
minute), and after many the subject is locked out for a while. The waits are enforced
by refusing early attempts with 429 and `Retry-After`, never by sleeping in the handler;
an attempt made while told to wait counts as a failure, so hammering locks out sooner.

An attempt is admitted before it is evaluated, atomically: `admit()` reads the counters
and counts the attempt as a failure in one transaction that holds them locked (a row
lock on PostgreSQL, the database's write lock on SQLite), so concurrent attempts, in one
process or many, queue there and each sees the ones before it. Fifty wrong passwords
sent at once are therefore judged like fifty sent one after another: the few free
attempts are evaluated, the rest are told to wait. An attempt that then succeeds is
refunded (`Attempt.succeeded`). Counters live in the database, so every server process
sees the same ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

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

    async def admit(self, subjects: dict[str, Policy]) -> Attempt:
        """Admit one attempt against every subject, or raise RateLimited. Either way the
        attempt is counted as a failure before this returns (an admitted one until
        `Attempt.succeeded` refunds it), in one transaction holding the counters."""
        now = datetime.now(UTC)
        keys = sorted(subjects)  # one lock order for every transaction: no deadlocks
        async with self.db.locking_engine.begin() as conn:
            rows = await self._locked_rows(conn, keys, now)
            wait = _wait(rows, subjects, now)
            for key in keys:
                await _count_failure(conn, key, subjects[key], now)
            if wait > 0:
                # Told to wait, and tried anyway: the refusal says the wait it earned.
                wait = max(wait, _wait(await self._rows(conn, keys), subjects, now))
        if wait > 0:
            raise too_many_attempts(max(1, round(wait + 0.49)))
        return Attempt(self, subjects)

    async def _locked_rows(
        self, conn: AsyncConnection, keys: Sequence[str], now: datetime
    ) -> Sequence[sa.Row[Any]]:
        if conn.dialect.name == "postgresql":
            # Rows to lock even for subjects never seen before; then lock them in order.
            for key in keys:
                await conn.execute(
                    postgresql.insert(AuthThrottle)
                    .values(key=key, failures=0, last_failure_at=now)
                    .on_conflict_do_nothing(index_elements=["key"])
                )
            return await self._rows(conn, keys, lock=True)
        return await self._rows(conn, keys)  # BEGIN IMMEDIATE already holds the lock

    async def _rows(
        self, conn: AsyncConnection, keys: Sequence[str], *, lock: bool = False
    ) -> Sequence[sa.Row[Any]]:
        table = AuthThrottle.__table__  # type: ignore[attr-defined]
        query = sa.select(table).where(table.c.key.in_(keys)).order_by(table.c.key)
        if lock:
            query = query.with_for_update()
        return (await conn.execute(query)).all()

    async def _refund(self, keys: Iterable[str], *, clear: Iterable[str] = ()) -> None:
        table = AuthThrottle.__table__  # type: ignore[attr-defined]
        async with self.db.engine.begin() as conn:
            cleared = sorted(set(clear))
            if cleared:
                await conn.execute(sa.delete(table).where(table.c.key.in_(cleared)))
            for key in sorted(set(keys) - set(cleared)):
                await conn.execute(
                    sa.update(table)
                    .where(table.c.key == key, table.c.failures > 0)
                    .values(failures=table.c.failures - 1)
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


@dataclass(frozen=True)
class Attempt:
    """An admitted attempt, counted as a failure until it is known to have succeeded."""

    throttle: Throttle
    subjects: dict[str, Policy]

    async def failed(self, keys: Iterable[str] | None = None) -> None:
        """The attempt was wrong. It is already counted; this restarts the waits of the
        subjects (or of `keys` among them) from now, when the failure became known
        (judging a password takes a while, and a wait should follow the answer)."""
        table = AuthThrottle.__table__  # type: ignore[attr-defined]
        now = datetime.now(UTC)
        chosen = sorted(set(self.subjects) if keys is None else set(keys) & set(self.subjects))
        async with self.throttle.db.engine.begin() as conn:
            await conn.execute(
                sa.update(table)
                .where(table.c.key.in_(chosen), table.c.last_failure_at < now)
                .values(last_failure_at=now)
            )

    async def succeeded(self, *, clear: Iterable[str] = ()) -> None:
        """The attempt was right: forget the subjects in `clear` altogether (the account
        whose password was given) and refund this attempt to the others."""
        await self.throttle._refund(self.subjects, clear=clear)

    async def refund(self, keys: Iterable[str]) -> None:
        """Take this attempt back from `keys` only (it was refused for a reason that is
        not theirs to pay for)."""
        await self.throttle._refund(set(keys) & set(self.subjects))


def _wait(rows: Sequence[sa.Row[Any]], subjects: dict[str, Policy], now: datetime) -> float:
    """Seconds until every subject admits another attempt (0: now)."""
    wait = 0.0
    for row in rows:
        policy = subjects[row.key]
        last = as_utc(row.last_failure_at)
        locked_until = as_utc(row.locked_until) if row.locked_until is not None else None
        if locked_until is not None and locked_until > now:
            wait = max(wait, (locked_until - now).total_seconds())
        elif now - last > policy.window:
            continue
        elif row.failures >= policy.free_failures:
            delay = min(2 ** (row.failures - policy.free_failures), policy.max_delay_s)
            wait = max(wait, (last + timedelta(seconds=delay) - now).total_seconds())
    return wait


async def _count_failure(conn: AsyncConnection, key: str, policy: Policy, now: datetime) -> None:
    """One more failure for `key` (the count starts again once the window has passed);
    at `lockout_after` the subject is locked out."""
    table = AuthThrottle.__table__  # type: ignore[attr-defined]
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(
        AuthThrottle
    )
    stale = table.c.last_failure_at < now - policy.window
    failures = sa.case((stale, 1), else_=table.c.failures + 1)
    await conn.execute(
        insert.values(key=key, failures=1, last_failure_at=now).on_conflict_do_update(
            index_elements=["key"], set_={"failures": failures, "last_failure_at": now}
        )
    )
    await conn.execute(
        sa.update(table)
        .where(table.c.key == key, table.c.failures >= policy.lockout_after)
        .values(locked_until=now + policy.lockout, failures=0)
    )
