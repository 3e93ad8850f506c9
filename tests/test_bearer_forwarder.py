"""The forwarder the conformance suite reaches /mcp through passes every byte on, so
the server behind it sees exactly what a client sent (only Authorization is replaced)."""

from __future__ import annotations

import asyncio

from tests.bearer_forwarder import make_handler

REQUESTS = (
    b"POST /mcp?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nmcp-name:  list_models \t\r\n"
    b"Authorization: Bearer the-clients-own\r\nX-Odd:value\r\nContent-Length: 5\r\n\r\n{ } \n"
    b"POST /mcp HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n0\r\nTrailer-X:  t \r\n\r\n"
)
EXPECTED = (
    b"POST /mcp?x=1 HTTP/1.1\r\nAuthorization: Bearer k1\r\nHost: 127.0.0.1:9\r\n"
    b"mcp-name:  list_models \t\r\nX-Odd:value\r\nContent-Length: 5\r\n\r\n{ } \n"
    b"POST /mcp HTTP/1.1\r\nAuthorization: Bearer k1\r\nHost: h\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nTrailer-X:  t \r\n\r\n"
)
ANSWER = b"HTTP/1.1 200 OK\r\nX-Back:  as sent \r\nContent-Length: 2\r\n\r\nok"


def test_the_forwarder_changes_no_byte_but_the_key() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        received = bytearray()
        got_all = asyncio.Event()

        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while len(received) < len(EXPECTED):
                received.extend(await reader.read(65_536) or b"!eof")
            got_all.set()
            writer.write(ANSWER)
            await writer.drain()
            writer.close()

        origin = await asyncio.start_server(upstream, "127.0.0.1", 0)
        port = origin.sockets[0].getsockname()[1]
        front = await asyncio.start_server(make_handler("127.0.0.1", port, "k1"), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*front.sockets[0].getsockname()[:2])
        writer.write(REQUESTS)
        await writer.drain()
        await asyncio.wait_for(got_all.wait(), 10)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        for server in (front, origin):
            server.close()
        return bytes(received), answer

    received, answer = asyncio.run(scenario())
    assert received == EXPECTED
    assert answer == ANSWER
