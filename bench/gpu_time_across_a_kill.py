"""GPU seconds run versus billed across a control-plane kill (issue 17, item 4).

A priced local instance ($3.60/h, billed in windows of `--window` seconds) on the instant
upstream (`tests/instant_vllm.py`, with a child that ignores SIGTERM) becomes ready; the
control plane (`auxen serve`, SQLite) is killed with SIGKILL and stays down for
`--downtime` seconds, then starts again and settles. "Run" is the time from the
instance's first process starting to its last one ending, read from /proc; "billed" is
what the ledger charged, in seconds at the instance's price. The instance's own watchdog
should stop it at the end of its last paid window, so run - billed stays under zero plus
the time it takes to end the processes, however long the control plane is down.

Run: `.venv/bin/python bench/gpu_time_across_a_kill.py [--window 10] [--downtime 45]`.
Prints one table and writes bench/results/gpu_time_across_a_kill.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.ledger_checks import sql  # noqa: E402
from tests.servers import AuxenServer, instant_env, wait_for_state  # noqa: E402

HOURLY_MICROS = 3_600_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


def processes(instance_id: str) -> dict[int, float]:
    """Live processes of the instance -> their start time (seconds since the epoch)."""
    marker = f"AUXEN_INSTANCE_ID={instance_id}".encode()
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X"):
            found[int(entry.name)] = BOOT + int(fields[19]) / CLOCK_TICKS
    return found


BOOT = boot_time()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--downtime", type=float, default=45.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="auxen-gpu-kill-"))
    (root / "models" / "tiny").mkdir(parents=True)
    (root / "models" / "tiny" / "config.json").write_text('{"model_type": "llama"}')
    prices = root / "prices.toml"
    prices.write_text('[gpu.cpu]\nhourly_usd = "3.60"\n')
    server = AuxenServer(
        root / "data",
        f"sqlite:///{root / 'auxen.db'}",
        {
            **instant_env(INSTANT_VLLM_STUBBORN_CHILD="1"),
            "AUXEN_MODELS_DIR": str(root / "models"),
            "AUXEN_PRICES_FILE": str(prices),
            "AUXEN_BILLING_TICK_S": str(args.window),
            "AUXEN_LOCAL_STOP_GRACE_S": "2",
        },
    ).start()
    _, key = server.workspace("bench@example.com", usd="5")
    with server.client(key) as http:
        instance_id = http.post("/v1/instances", json={"model": str(root / "models/tiny")}).json()[
            "id"
        ]
        wait_for_state(http, instance_id, {"ready"}, timeout=120)
    first_start = min(processes(instance_id).values())
    time.sleep(args.window / 2)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    server.proc = None
    killed = time.time()
    last_seen = killed
    while time.time() < killed + args.downtime:
        if processes(instance_id):
            last_seen = time.time()
        time.sleep(0.1)
    server.start()
    with server.client(key) as http:
        state = wait_for_state(http, instance_id, {"failed", "destroyed"}, timeout=120)
        while processes(instance_id):
            last_seen = time.time()
            time.sleep(0.1)
        time.sleep(3 * args.window)  # the meter settles what it finds
    charged = int(
        sql(
            server.database_url,
            "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger_entry "
            "WHERE instance_id = :i AND kind = 'charge'",
            i=instance_id,
        )[0][0]
    )
    server.stop()
    run_s = last_seen - first_start
    billed_s = charged / HOURLY_MICROS * 3600
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "window_s": args.window,
        "downtime_s": args.downtime,
        "state_after_restart": state["state"],
        "ran_after_kill_s": round(last_seen - killed, 1),
        "gpu_run_s": round(run_s, 1),
        "billed_s": round(billed_s, 1),
        "unbilled_s": round(max(0.0, run_s - billed_s), 1),
    }
    print("| window s | downtime s | ran after kill s | GPU run s | billed s | unbilled s |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.window:g} | {args.downtime:g} | {result['ran_after_kill_s']} | "
        f"{result['gpu_run_s']} | {result['billed_s']} | {result['unbilled_s']} |"
    )
    out = HERE / "results" / "gpu_time_across_a_kill.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
