"""Proxy throughput with 1 and 2 `auxen serve` worker processes on one PostgreSQL
database, in one run: what sharing state through the database costs and what a second
process buys on this machine. See README.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
from proxy_overhead import FAKE, HERE, MODEL, build_request, free_port, load, wait_http

ADMIN_URL = os.environ.get(
    "AUXEN_BENCH_PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def serve(env: dict[str, str], workers: int, port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "auxen.cli.main", "serve", "--workers", str(workers)],
        env={**env, "AUXEN_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )
    wait_http(f"http://127.0.0.1:{port}/health", timeout=180)
    return proc


def ready_instance(url: str, key: str) -> dict[str, Any]:
    http = httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {key}"})
    made: dict[str, Any] = http.post("/v1/instances", json={"model": MODEL}).json()
    deadline = time.monotonic() + 60
    while http.get(f"/v1/instances/{made['id']}").json()["state"] != "ready":
        if time.monotonic() > deadline:
            raise RuntimeError("bench instance never became ready")
        time.sleep(0.2)
    return made


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    args = parser.parse_args()
    total = 1600 if args.quick else 6000
    name = f"auxen_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = {k: v for k, v in os.environ.items() if not k.startswith("AUXEN_")}
            env.update(
                AUXEN_DATA_DIR=str(Path(tmp) / "data"),
                AUXEN_DATABASE_URL=ADMIN_URL.rsplit("/", 1)[0] + f"/{name}",
                AUXEN_VLLM_COMMAND=f"{sys.executable} {FAKE}",
            )
            cli = [sys.executable, "-m", "auxen.cli.main"]
            init = subprocess.run(
                [*cli, "init", "--email", "bench@example.com"],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            key = next(x for x in init.stdout.split() if x.startswith("auxen_live_"))
            instance: dict[str, Any] = {}
            for workers in (1, 2):
                port = free_port()
                proc = serve(env, workers, port, Path(tmp) / "auxen.log")
                try:
                    url = f"http://127.0.0.1:{port}"
                    if not instance:  # made once; the upstream outlives the first server
                        instance = ready_instance(url, key)
                    path = f"/v1/instances/{instance['id']}/chat/completions"
                    for stream in (False, True):
                        raw = build_request(port, path, instance["instance_key"], stream)
                        measured = asyncio.run(load(port, raw, 16, total))
                        results.append({"workers": workers, "stream": stream, **measured})
                finally:
                    if workers == 2:
                        httpx2.delete(
                            f"http://127.0.0.1:{port}/v1/instances/{instance['id']}",
                            headers={"Authorization": f"Bearer {key}"},
                        )
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(60)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, PostgreSQL, 16 clients, {total} requests each\n"
    )
    print("| workers | stream | p50 ms | p99 ms | req/s |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['workers']} | {r['stream']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['rps']:.0f} |"
        )
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "proxy_workers.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
