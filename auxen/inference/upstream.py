"""A lean keep-alive HTTP/1.1 client for the proxy's hot path to an instance's server.

The proxy talks to one kind of peer (a vLLM OpenAI server: HTTP/1.1, JSON bodies,
chunked SSE streams). A general client (httpx2, used everywhere else) spent most of the
proxy's CPU in layers this path never needs (auth flows, redirects, cookies, a generic
pool); measured in bench/proxy_overhead.py. This does only what the path needs:
pooled keep-alive connections per origin, Content-Length and chunked bodies, TLS for
remote providers, one retry when a pooled connection turns out to be stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import defaultdict
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024
MAX_IDLE_PER_ORIGIN = 64


class UpstreamError(Exception):
    """The upstream could not be reached or broke the protocol."""


Origin = tuple[str, str, int]


class _Conn:
    __slots__ = ("origin", "reader", "writer")

    def __init__(
        self, origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.origin = origin
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class UpstreamResponse:
    def __init__(
        self, pool: UpstreamPool, conn: _Conn, status: int, headers: dict[bytes, bytes]
    ) -> None:
        self.pool = pool
        self.status = status
        self.headers = headers
        self._conn: _Conn | None = conn
        self._chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
        length = headers.get(b"content-length")
        self._remaining = int(length) if length is not None else None
        self._reusable = headers.get(b"connection", b"").lower() != b"close" and (
            self._chunked or self._remaining is not None
        )

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        conn = self._conn
        if conn is None:
            return
        reader = conn.reader
        try:
            if self._chunked:
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                    if size == 0:
                        await reader.readuntil(b"\r\n")  # no trailers from vLLM
                        break
                    data = await reader.readexactly(size + 2)
                    yield data[:-2]
            elif self._remaining is not None:
                while self._remaining > 0:
                    data = await reader.read(min(self._remaining, 65536))
                    if not data:
                        raise UpstreamError("upstream closed the connection mid-body")
                    self._remaining -= len(data)
                    yield data
            else:
                while data := await reader.read(65536):
                    yield data
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self._reusable = False
            raise UpstreamError(f"upstream broke off: {type(exc).__name__}") from exc
        self._release(self._reusable)

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_chunks()])

    def close(self) -> None:
        """Give the connection back if the body was fully read, else drop it."""
        self._release(False)

    def _release(self, reuse: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self.pool._give_back(conn, reuse)


class UpstreamPool:
    def __init__(self, connect_timeout: float = 5.0) -> None:
        self.connect_timeout = connect_timeout
        self._idle: defaultdict[Origin, list[_Conn]] = defaultdict(list)
        self._tls = ssl.create_default_context()

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes = b""
    ) -> UpstreamResponse:
        parts = urlsplit(url)
        scheme = parts.scheme
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        origin = (scheme, host, port)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {parts.netloc}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        idle = self._idle[origin]
        while idle:  # a pooled connection may have been closed by the server meanwhile
            conn = idle.pop()
            try:
                return await self._exchange(conn, raw)
            except _StaleConnection:
                conn.close()
        return await self._exchange(await self._connect(origin), raw, fresh=True)

    async def _connect(self, origin: Origin) -> _Conn:
        scheme, host, port = origin
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=self._tls if scheme == "https" else None,
                    limit=MAX_HEAD_BYTES,
                )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to upstream: {type(exc).__name__}") from exc
        return _Conn(origin, reader, writer)

    async def _exchange(self, conn: _Conn, raw: bytes, fresh: bool = False) -> UpstreamResponse:
        try:
            conn.writer.write(raw)
            head = await conn.reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            conn.close()
            nothing_back = isinstance(exc, asyncio.IncompleteReadError) and not exc.partial
            if not fresh and (nothing_back or isinstance(exc, ConnectionError)):
                raise _StaleConnection from exc
            raise UpstreamError(f"upstream failed: {type(exc).__name__}") from exc
        try:
            status_line, *header_lines = head[:-4].split(b"\r\n")
            status = int(status_line.split(b" ", 2)[1])
            headers: dict[bytes, bytes] = {}
            for line in header_lines:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
        except (ValueError, IndexError) as exc:
            conn.close()
            raise UpstreamError("upstream sent a malformed response") from exc
        return UpstreamResponse(self, conn, status, headers)

    def _give_back(self, conn: _Conn, reuse: bool) -> None:
        idle = self._idle[conn.origin]
        if reuse and len(idle) < MAX_IDLE_PER_ORIGIN and not conn.reader.at_eof():
            idle.append(conn)
        else:
            conn.close()

    def forget_origin(self, url: str) -> None:
        parts = urlsplit(url)
        origin = (
            parts.scheme,
            parts.hostname or "",
            parts.port or (443 if parts.scheme == "https" else 80),
        )
        for conn in self._idle.pop(origin, []):
            conn.close()

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


class _StaleConnection(Exception):
    pass
