"""Test harness: an HTTP/1.1 forwarder that adds `Authorization: Bearer <key>` to every
request, for clients that cannot send a key themselves (the MCP conformance suite).

It works on bytes, not on a parsed request: every byte the client sends reaches the
Auxen server unchanged (Host and Origin, the case and spacing of header names and values,
the body and its framing), except that any `Authorization` line is replaced by the key's.
Responses are copied back byte for byte. So the server behind it makes every decision
itself, and an HTTP parser quirk (a header value with surrounding whitespace) shows up
in tests exactly as a real client would hit it.

    python tests/bearer_forwarder.py UPSTREAM_URL PORT   (the key in AUXEN_FORWARD_KEY)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

HEAD_LIMIT = 1 << 20


def rewrite_head(head: bytes, key: str) -> tuple[bytes, int | None, bool]:
    """The request head with the key's Authorization line in place of any the client
    sent; and how its body is framed (Content-Length, or chunked)."""
    lines = head[: -len(b"\r\n\r\n")].split(b"\r\n")
    kept = [lines[0], f"Authorization: Bearer {key}".encode()]
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        lowered = name.strip().lower()
        if lowered == b"authorization":
            continue
        if lowered == b"content-length":
            length = int(value.strip())
        elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        kept.append(line)
    return b"\r\n".join(kept) + b"\r\n\r\n", length, chunked


async def copy_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, length: int | None, chunked: bool
) -> None:
    """Copy one request body exactly as framed (RFC 9112 section 6)."""
    if chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            writer.write(size_line)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailer section, ended by an empty line
                    trailer = await reader.readuntil(b"\r\n")
                    writer.write(trailer)
                    if trailer == b"\r\n":
                        return
            writer.write(await reader.readexactly(size + 2))
    elif length:
        writer.write(await reader.readexactly(length))


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65_536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def make_handler(host: str, port: int, key: str) -> Handler:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream_r, upstream_w = await asyncio.open_connection(host, port, limit=HEAD_LIMIT)
        answers = asyncio.create_task(pipe(upstream_r, client_w))
        try:
            while True:
                try:
                    head = await client_r.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                rewritten, length, chunked = rewrite_head(head, key)
                upstream_w.write(rewritten)
                await copy_body(client_r, upstream_w, length, chunked)
                await upstream_w.drain()
        finally:
            with contextlib.suppress(Exception):
                upstream_w.close()
            await answers

    return handle


async def serve(upstream: str, port: int, key: str) -> None:
    target = urlsplit(upstream)
    handler = make_handler(target.hostname or "127.0.0.1", target.port or 80, key)
    server = await asyncio.start_server(handler, "127.0.0.1", port, limit=HEAD_LIMIT)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2]), os.environ["AUXEN_FORWARD_KEY"]))
