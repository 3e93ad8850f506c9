"""Resumable SSE streams for 2025-11-25 sessions (the stateless 2026-07-28 revision has
none by design).

Every message a session's streams carry is kept for a while in that session's own
event store, so a client whose connection dropped (a `provision_instance` wait streams
for minutes) reconnects with `Last-Event-ID` and receives what it missed, then the rest
live: progress and the result are not lost. Each POST stream starts with a priming event
(an id, no data) and a `retry:` field telling the client when to reconnect.

The events hold answers (a `query_instance` result carries the completion), so they
live in this process's memory only, never in the database or on disk (zero retention),
bounded per session by count, size and age, and dropped with the session. A session is
therefore resumable on the server that holds it: behind a load balancer, route by
`Mcp-Session-Id` (README, "Several servers").
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.streamable_http import (
    EventCallback,
    EventMessage,
    EventStore,
    StreamableHTTPServerTransport,
)
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import JSONRPCMessage

RETRY_MS = 2_000  # the `retry:` a client waits before reconnecting
MAX_EVENTS = 1_000  # per session; the oldest give way
MAX_EVENT_BYTES = 8 << 20  # per session
EVENT_TTL_S = 600.0


@dataclass
class _Event:
    event_id: str
    stream_id: str
    message: JSONRPCMessage | None
    size: int
    at: float


class SessionEvents(EventStore):
    """One session's recent events. Ids are this session's own sequence; the SDK only
    replays into the session that presents them, after checking who owns it."""

    def __init__(self) -> None:
        self._events: deque[_Event] = deque()
        self._bytes = 0
        self._next = itertools.count(1)

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        now = time.monotonic()
        size = 0 if message is None else len(message.model_dump_json(by_alias=True))
        event = _Event(str(next(self._next)), stream_id, message, size, now)
        self._events.append(event)
        self._bytes += size
        while self._events and (
            len(self._events) > MAX_EVENTS
            or self._bytes > MAX_EVENT_BYTES
            or now - self._events[0].at > EVENT_TTL_S
        ):
            self._bytes -= self._events.popleft().size
        return event.event_id

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        events = list(self._events)
        start = next((i for i, e in enumerate(events) if e.event_id == last_event_id), None)
        if start is None:
            return None  # unknown, or too old: nothing to resume
        stream_id = events[start].stream_id
        for event in events[start + 1 :]:
            if event.stream_id == stream_id and event.message is not None:
                await send_callback(EventMessage(event.message, event.event_id))
        return stream_id


class ResumableSessions(StreamableHTTPSessionManager):
    """The SDK's session manager, with an event store of its own for each session (the
    SDK shares one store among all sessions, whose stream ids, the JSON-RPC request ids,
    repeat from session to session)."""

    def __init__(self, app: Any, **options: Any) -> None:
        super().__init__(app, retry_interval=RETRY_MS, **options)

    def _admit_session(
        self, requestor: AuthorizationContext | None
    ) -> StreamableHTTPServerTransport | None:
        transport = super()._admit_session(requestor)
        if transport is not None:
            transport._event_store = SessionEvents()
        return transport
