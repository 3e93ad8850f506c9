"""How many MCP sessions one principal may hold open, and which one gives way.

A principal (an API key, or an OAuth grant's client, person and workspace) holds at most
`limit` sessions, so one key cannot crowd every other workspace out of the server's
session table. Clients that never send DELETE (one-shot CLIs such as the MCP Inspector's)
must not lock their own key out: when a principal at its limit opens another session,
its least recently used idle session (no request in flight, no open stream) is closed to
make room. Only when every one of its sessions is busy is the new one refused.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass
class _Session:
    owner: str
    last_active: float  # monotonic time of its last request's start or end
    in_flight: int = 0


class SessionQuota:
    def __init__(
        self, limit: int, idle_s: float, close_session: Callable[[str], Awaitable[None]]
    ) -> None:
        self.limit = limit
        self.idle_s = idle_s  # the server closes sessions idle this long by itself
        self._close_session = close_session
        self._sessions: dict[str, _Session] = {}
        # Sessions admitted whose opening request is still being answered: counted, so
        # many simultaneous opens cannot all slip under the limit.
        self._opening: dict[str, int] = {}

    def owner_of(self, session_id: str) -> str | None:
        session = self._sessions.get(session_id)
        return session.owner if session else None

    async def admit(self, owner: str) -> bool:
        """Whether `owner` may open one more session, closing its least recently used
        idle session first when it is at its limit."""
        now = time.monotonic()
        for sid, s in list(self._sessions.items()):
            if not s.in_flight and now - s.last_active > self.idle_s:
                del self._sessions[sid]  # expired on the server already
        mine = [(s.last_active, sid) for sid, s in self._sessions.items() if s.owner == owner]
        if len(mine) + self._opening.get(owner, 0) >= self.limit:
            idle = sorted(entry for entry in mine if not self._sessions[entry[1]].in_flight)
            if not idle:
                return False
            _, oldest = idle[0]
            del self._sessions[oldest]
            self._opening[owner] = self._opening.get(owner, 0) + 1  # before any await
            await self._close_session(oldest)
            return True
        self._opening[owner] = self._opening.get(owner, 0) + 1
        return True

    def admitted(self, owner: str) -> None:
        """The opening request of a session `admit` let in has been answered (the
        session is `opened` by now, or it was not established)."""
        left = self._opening.get(owner, 0) - 1
        if left > 0:
            self._opening[owner] = left
        else:
            self._opening.pop(owner, None)

    def opened(self, session_id: str, owner: str) -> None:
        self._sessions[session_id] = _Session(owner, time.monotonic())

    def closed(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    @asynccontextmanager
    async def in_use(self, session_id: str) -> AsyncIterator[None]:
        """One request on a known session: it is busy (never evicted) until it ends."""
        session = self._sessions.get(session_id)
        if session is None:
            yield
            return
        session.in_flight += 1
        session.last_active = time.monotonic()
        try:
            yield
        finally:
            session.in_flight -= 1
            session.last_active = time.monotonic()
