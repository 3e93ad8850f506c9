"""Dashboard server time: every dashboard page of a workspace with 1,000 instances,
100,000 usage rows, 20,000 ledger charges and 1,000 keys, against two baselines on the
same server in the same run (`/health`, and `/login`: a page rendered from a template
with no database work).

Run: `.venv/bin/python bench/dashboard/run.py [--quick]`. Prints a Markdown table and
writes bench/results/dashboard.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS = HERE.parent / "results" / "dashboard.json"
INSTANCES, USAGE_ROWS, CHARGES_PER_INSTANCE, DAYS = 1_000, 100_000, 20, 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_auxen(root: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUXEN_")}
    env.update(
        AUXEN_DATA_DIR=str(root / "data"),
        AUXEN_DATABASE_URL=f"sqlite:///{root / 'auxen.db'}",
        AUXEN_PORT=str(port),
        PYTHONPATH=str(REPO),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "auxen.cli.main", "serve"],
        env=env,
        stdout=(root / "server.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx2.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("auxen serve did not start")


def sign_up(http: httpx2.Client) -> None:
    form = http.get("/signup")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token
    done = http.post(
        "/signup",
        data={"csrf_token": token.group(1), "email": "bench@example.com",
              "password": "a benchmark passphrase", "workspace": "Bench"},
    )  # fmt: skip
    assert done.status_code == 303, done.text


def seed(db_path: Path) -> dict[str, Any]:
    """Direct inserts into the workspace the person signed up with."""
    from auxen.store.models import ApiKey, Instance, LedgerEntry, UsageRecord

    rng = random.Random(7)
    engine = sa.create_engine(f"sqlite:///{db_path}")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        ws = conn.execute(sa.text("SELECT id FROM workspace")).scalar_one()
        instances, keys = [], []
        for n in range(INSTANCES):
            created = now - timedelta(days=DAYS * (INSTANCES - n) / INSTANCES)
            state = "failed" if n % 17 == 0 else "destroyed"
            iid = f"inst_bench{n:06d}"
            instances.append(
                dict(id=iid, workspace_id=ws, livemode=True, model=f"org/model-{n % 7}",
                     gpu_type="cpu", tier="dedicated", provider="local", state=state,
                     hourly_price_micros=3_600_000, ttl_seconds=3600,
                     expires_at=created + timedelta(hours=1), created_at=created,
                     destroyed_at=created + timedelta(hours=1), destroy_reason="requested")
            )  # fmt: skip
            keys.append(
                dict(id=f"k{n:023d}", workspace_id=ws, kind="instance", livemode=True,
                     instance_id=iid, name="default", display_prefix=f"auxk_{n:06d}",
                     secret_hash=secrets.token_bytes(32), created_at=created, role="member")
            )  # fmt: skip
        conn.execute(sa.insert(Instance), instances)
        conn.execute(sa.insert(ApiKey), keys)
        usage = []
        for n in range(USAGE_ROWS):
            inst = instances[rng.randrange(INSTANCES)]
            at = inst["created_at"] + timedelta(seconds=rng.randrange(3600))
            usage.append(
                dict(id=f"use_bench{n:08d}", workspace_id=ws, instance_id=inst["id"],
                     endpoint="chat.completions", model=inst["model"], stream=n % 2 == 0,
                     status_code=200, outcome="ok", prompt_tokens=rng.randrange(20, 900),
                     completion_tokens=rng.randrange(5, 400), latency_ms=120.0,
                     created_at=min(at, now))
            )  # fmt: skip
        conn.execute(sa.insert(UsageRecord), usage)
        ledger = [
            dict(id=f"led_bench{i:08d}", workspace_id=ws, livemode=True, kind="charge",
                 amount_micros=180_000, instance_id=inst["id"], reference=None, note="",
                 created_at=min(inst["created_at"] + timedelta(minutes=3 * c), now))
            for i, (inst, c) in enumerate(
                (inst, c) for inst in instances for c in range(CHARGES_PER_INSTANCE)
            )
        ]  # fmt: skip
        ledger.append(
            dict(id="led_benchbuy", workspace_id=ws, livemode=True, kind="purchase",
                 amount_micros=5_000_000_000, instance_id=None, reference="bench", note="",
                 created_at=now)
        )  # fmt: skip
        conn.execute(sa.insert(LedgerEntry), ledger)
    engine.dispose()
    return {"instances": INSTANCES, "usage_rows": USAGE_ROWS, "ledger_rows": len(ledger),
            "instance_keys": INSTANCES}  # fmt: skip


def time_path(http: httpx2.Client, path: str, n: int) -> dict[str, float]:
    for _ in range(max(3, n // 10)):  # warm-up
        http.get(path).raise_for_status()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        reply = http.get(path)
        samples.append((time.perf_counter() - start) * 1000)
        if reply.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {reply.status_code}")
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 2),
        "max_ms": round(samples[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    n = 20 if parser.parse_args().quick else 100
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = free_port()
        proc = start_auxen(root, port)
        try:
            http = httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            sign_up(http)
            seeded = seed(root / "auxen.db")
            some = f"inst_bench{INSTANCES - 1:06d}"
            paths = [
                "/health", "/login",
                "/dashboard", "/instances", "/instances?page=20", "/instances?state=failed",
                "/instances/states.json", f"/instances/{some}/destroy", "/keys",
                "/knowledge-bases", "/usage?days=7", "/usage?days=30", "/usage?days=90",
                "/usage?days=90&page=10", "/usage.csv?days=90", "/usage.csv?days=90&by=instance",
                "/billing", "/billing?page=200", "/account",
            ]  # fmt: skip
            rows = {path: time_path(http, path, n) for path in paths}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    health, login = rows["/health"]["p50_ms"], rows["/login"]["p50_ms"]
    for row in rows.values():
        row["x_health_p50"] = round(row["p50_ms"] / health, 1)
        row["x_login_p50"] = round(row["p50_ms"] / login, 1)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "date": datetime.now(UTC).date().isoformat(),
        "requests_per_page": n,
        "seeded": seeded,
        "pages": rows,
    }
    print("| page | p50 ms | p95 ms | max ms | p50 / health | p50 / login |")
    print("|---|---|---|---|---|---|")
    for path, r in rows.items():
        print(
            f"| `{path}` | {r['p50_ms']} | {r['p95_ms']} | {r['max_ms']} | "
            f"{r['x_health_p50']} | {r['x_login_p50']} |"
        )
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
