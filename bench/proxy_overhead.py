"""Proxy overhead: the same load sent straight to an instant upstream and through Auxen's
instance endpoint (key auth, body checks, metering), in one run.

Run: `make bench` (or `.venv/bin/python bench/proxy_overhead.py [--quick]`). Prints a
Markdown table and writes bench/results/proxy_overhead.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

HERE = Path(__file__).resolve().parent
FAKE = HERE / "fake_vllm.py"
MODEL = "bench/instant"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url, timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


class RawClient:
    """A minimal keep-alive HTTP/1.1 client, so the load generator costs little CPU."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[float, float]:
        """Send one request; returns (total seconds, seconds to first body byte)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        start = time.perf_counter()
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {head!r}")
        headers = head.lower()
        first = 0.0
        if b"transfer-encoding: chunked" in headers:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                if not first and b"content" in data:
                    first = time.perf_counter() - start
        else:
            length = int(headers.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            await self.reader.readexactly(length)
            first = time.perf_counter() - start
        return time.perf_counter() - start, first


def build_request(port: int, path: str, key: str, stream: bool) -> bytes:
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 16,
            "stream": stream,
        }
    ).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def load(port: int, raw: bytes, concurrency: int, total: int) -> dict[str, float]:
    latencies: list[float] = []
    firsts: list[float] = []
    per_worker = total // concurrency

    async def worker() -> None:
        client = RawClient(port)
        for _ in range(per_worker):
            t, f = await client.request(raw)
            latencies.append(t)
            firsts.append(f)
        assert client.writer is not None
        client.writer.close()

    # Warm up connections and caches outside the measurement.
    await asyncio.gather(*(RawClient(port).request(raw) for _ in range(concurrency)))
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    fq = statistics.quantiles(firsts, n=100)
    return {
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "ttft_p50_ms": fq[49] * 1000,
        "rps": len(latencies) / elapsed,
        "requests": len(latencies),
    }


def start_fake(port: int, key: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, str(FAKE), "--port", str(port), "--served-model-name", MODEL],
        env={**os.environ, "VLLM_API_KEY": key},
    )
    wait_http(f"http://127.0.0.1:{port}/health")
    return proc


def start_auxen(data: Path, port: int) -> tuple[subprocess.Popen[bytes], str, str, str]:
    """`auxen serve` with one ready instance: (process, instance id, its key, account key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUXEN_")}
    env.update(
        AUXEN_DATA_DIR=str(data),
        AUXEN_PORT=str(port),
        AUXEN_VLLM_COMMAND=f"{sys.executable} {FAKE}",
    )
    cli = [sys.executable, "-m", "auxen.cli.main"]
    init = subprocess.run(
        [*cli, "init", "--email", "bench@example.com"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = next(line for line in init.stdout.splitlines() if line.startswith("auxen_live_"))
    proc = subprocess.Popen(
        [*cli, "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(data.parent / "auxen.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health")
    http = httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {key}"})
    made = http.post("/v1/instances", json={"model": MODEL}).json()
    deadline = time.monotonic() + 60
    while http.get(f"/v1/instances/{made['id']}").json()["state"] != "ready":
        if time.monotonic() > deadline:
            raise RuntimeError("bench instance never became ready")
        time.sleep(0.2)
    return proc, made["id"], made["instance_key"], key


def stop_auxen(proc: subprocess.Popen[bytes], url: str, key: str, instance_id: str) -> None:
    """Destroy the benchmark's instance (its upstream process goes with it), then stop."""
    httpx2.delete(f"{url}/v1/instances/{instance_id}", headers={"Authorization": f"Bearer {key}"})
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    args = parser.parse_args()
    n1, n16 = (300, 1600) if args.quick else (2000, 8000)
    direct_port, auxen_port = free_port(), free_port()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        fake = start_fake(direct_port, "direct-key")
        auxen, instance_id, instance_key, key = start_auxen(Path(tmp) / "data", auxen_port)
        try:
            for concurrency, total in ((1, n1), (16, n16)):
                for stream in (False, True):
                    direct = asyncio.run(
                        load(
                            direct_port,
                            build_request(
                                direct_port, "/v1/chat/completions", "direct-key", stream
                            ),
                            concurrency,
                            total,
                        )
                    )
                    proxied = asyncio.run(
                        load(
                            auxen_port,
                            build_request(
                                auxen_port,
                                f"/v1/instances/{instance_id}/chat/completions",
                                instance_key,
                                stream,
                            ),
                            concurrency,
                            total,
                        )
                    )
                    results.append(
                        {
                            "concurrency": concurrency,
                            "stream": stream,
                            "direct": direct,
                            "auxen": proxied,
                        }
                    )
        finally:
            stop_auxen(auxen, f"http://127.0.0.1:{auxen_port}", key, instance_id)
            fake.terminate()
            fake.wait(10)
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}\n"
    )
    print(
        "| clients | stream | direct p50 ms | auxen p50 ms | added p50 ms | added p99 ms "
        "| added TTFT p50 ms | direct req/s | auxen req/s | auxen/direct req/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        d, a = r["direct"], r["auxen"]
        print(
            f"| {r['concurrency']} | {r['stream']} | {d['p50_ms']:.2f} | {a['p50_ms']:.2f} "
            f"| {a['p50_ms'] - d['p50_ms']:.2f} | {a['p99_ms'] - d['p99_ms']:.2f} "
            f"| {a['ttft_p50_ms'] - d['ttft_p50_ms']:.2f} | {d['rps']:.0f} | {a['rps']:.0f} "
            f"| {a['rps'] / d['rps']:.2f} |"
        )
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "proxy_overhead.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
