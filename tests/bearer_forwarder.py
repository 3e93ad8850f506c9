"""Test harness: an HTTP forwarder that adds `Authorization: Bearer <key>` to every
request, for clients that cannot send a key themselves (the MCP conformance suite).

Everything else passes through untouched, Host and Origin included, so the Auxen
server behind it makes every decision itself (DNS-rebinding checks too).

    python tests/bearer_forwarder.py UPSTREAM_URL PORT   (the key in AUXEN_FORWARD_KEY)
"""

from __future__ import annotations

import os
import sys
from typing import Any

import httpx2
import uvicorn

HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length"}


def make_app(upstream: str, key: str) -> Any:
    client = httpx2.AsyncClient(base_url=upstream, timeout=None)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        # Optional whitespace around a value is not part of it (RFC 9110 section 5.5).
        headers = [
            (name, value.strip())
            for name, value in scope["headers"]
            if name.lower() not in HOP_BY_HOP and name.lower() != b"authorization"
        ]
        headers.append((b"authorization", f"Bearer {key}".encode()))
        target = scope["raw_path"].decode()
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode()
        request = client.build_request(scope["method"], target, headers=headers, content=body)
        response = await client.send(request, stream=True)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    return app


if __name__ == "__main__":
    upstream_url, port = sys.argv[1], int(sys.argv[2])
    uvicorn.run(
        make_app(upstream_url, os.environ["AUXEN_FORWARD_KEY"]),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
