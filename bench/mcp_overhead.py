"""MCP overhead: `query_instance` over Streamable HTTP (authenticated, both protocol
revisions) against the REST instance endpoint, on the same instant upstream, in one run.

Run: `make bench` (or `.venv/bin/python bench/mcp_overhead.py [--quick]`). Prints a
Markdown table and writes bench/results/mcp_overhead.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
from proxy_overhead import RawClient, build_request, free_port, start_auxen, stop_auxen

HERE = Path(__file__).resolve().parent
PROMPT = [{"role": "user", "content": "hello"}]


def mcp_request(port: int, key: str, payload: dict[str, Any], headers: dict[str, str]) -> bytes:
    body = json.dumps(payload).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def tool_call(request_id: int, instance_id: str, meta: dict[str, Any] | None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "name": "query_instance",
        "arguments": {"instance_id": instance_id, "messages": PROMPT, "max_tokens": 16},
    }
    if meta is not None:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


STATELESS_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
STATELESS_HEADERS = {
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "tools/call",
    "Mcp-Name": "query_instance",
}


def open_session(url: str, key: str) -> str:
    """The 2025-11-25 handshake; returns the session id."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
    reply = httpx2.post(
        f"{url}/mcp",
        headers=headers,
        json={
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "bench", "version": "1"},
            },
        },
    )
    reply.raise_for_status()
    session = reply.headers["mcp-session-id"]
    httpx2.post(
        f"{url}/mcp",
        headers={**headers, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"},
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
    )
    return session


async def load(
    port: int, make: Callable[[int, int], bytes], concurrency: int, total: int
) -> dict[str, float]:
    """`make(worker, n)` builds a worker's n-th request (so JSON-RPC ids stay unique)."""
    latencies: list[float] = []
    per_worker = total // concurrency

    async def worker(w: int) -> None:
        client = RawClient(port)
        await client.request(make(w, 0))  # warm up the connection outside the timing
        for n in range(1, per_worker + 1):
            t, _ = await client.request(make(w, n))
            latencies.append(t)
        assert client.writer is not None
        client.writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {"p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "rps": len(latencies) / elapsed}


def check_answers(url: str, key: str, instance_id: str) -> None:
    """One call each way, outside the timing, to be sure every path really answers."""
    raw = httpx2.post(
        f"{url}/mcp",
        headers={
            "Authorization": f"Bearer {key}",
            "Accept": "application/json, text/event-stream",
            **STATELESS_HEADERS,
        },
        json=tool_call(1, instance_id, STATELESS_META),
    )
    result = raw.json()["result"]
    assert not result["isError"], result
    assert result["structuredContent"]["usage"]["completion_tokens"] == 16, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    args = parser.parse_args()
    n1, n16 = (300, 1600) if args.quick else (2000, 4000)
    port = free_port()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        auxen, instance_id, _, key = start_auxen(Path(tmp) / "data", port)
        url = f"http://127.0.0.1:{port}"
        try:
            check_answers(url, key, instance_id)
            rest_raw = build_request(
                port, f"/v1/instances/{instance_id}/chat/completions", key, False
            )
            for concurrency, total in ((1, n1), (16, n16)):
                sessions = [open_session(url, key) for _ in range(concurrency)]
                ids = itertools.count(1)
                paths: dict[str, Callable[[int, int], bytes]] = {
                    "rest": lambda w, n: rest_raw,
                    "mcp_stateless": lambda w, n: mcp_request(
                        port, key, tool_call(n, instance_id, STATELESS_META), STATELESS_HEADERS
                    ),
                    "mcp_session": lambda w, n, ids=ids, sessions=sessions: mcp_request(
                        port,
                        key,
                        tool_call(next(ids), instance_id, None),
                        {"Mcp-Session-Id": sessions[w], "MCP-Protocol-Version": "2025-11-25"},
                    ),
                }
                row: dict[str, Any] = {"concurrency": concurrency}
                for name, make in paths.items():
                    row[name] = asyncio.run(load(port, make, concurrency, total))
                results.append(row)
        finally:
            stop_auxen(auxen, url, key, instance_id)
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}\n"
    )
    print(
        "| clients | REST p50 ms | MCP stateless p50 ms | added p50 ms | MCP session p50 ms "
        "| added p50 ms | REST req/s | MCP stateless req/s | MCP session req/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        rest, st, se = r["rest"], r["mcp_stateless"], r["mcp_session"]
        print(
            f"| {r['concurrency']} | {rest['p50_ms']:.2f} | {st['p50_ms']:.2f} "
            f"| {st['p50_ms'] - rest['p50_ms']:.2f} | {se['p50_ms']:.2f} "
            f"| {se['p50_ms'] - rest['p50_ms']:.2f} | {rest['rps']:.0f} | {st['rps']:.0f} "
            f"| {se['rps']:.0f} |"
        )
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "mcp_overhead.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
