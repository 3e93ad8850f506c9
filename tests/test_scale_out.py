"""Several `auxen serve` processes on one PostgreSQL database, as an operator runs them
(one data directory and master key, instant upstreams): they start together, hand
reconcile leadership on when one freezes, and agree on what a destroy means."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import PG_ADMIN_URL, POSTGRES, _pg_admin
from tests.ledger_checks import settled_exactly, sql
from tests.servers import AuxenServer, instant_env, wait_for_state

pytestmark = pytest.mark.skipif(not POSTGRES, reason="needs PostgreSQL on 127.0.0.1:5432")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (dropped afterwards)."""
    name = f"auxen_test_{secrets.token_hex(6)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def servers(root: Path, url: str, count: int, **env: str) -> Iterator[list[AuxenServer]]:
    """`count` servers on one database and data directory, started at the same moment;
    stopped at the end, failing the test if one logged a traceback."""
    (root / "models" / "tiny").mkdir(parents=True, exist_ok=True)
    (root / "models" / "tiny" / "config.json").write_text('{"model_type": "llama"}')
    env = {**instant_env(), "AUXEN_MODELS_DIR": str(root / "models"), **env}
    started = [AuxenServer(root / "data", url, extra_env=env).spawn() for _ in range(count)]
    try:
        for server in started:
            server.wait_healthy()
        yield started
    finally:
        for server in started:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGCONT)  # a test may have frozen it
        try:
            for server in started:
                server.stop_clean()
        finally:
            _kill_upstreams(root / "data")


def _processes_with(mark: str) -> list[int]:
    """Processes whose environment holds `mark` (`NAME=value`)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark.encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue  # gone, or not ours to read
    return found


def _kill_upstreams(data_dir: Path) -> None:
    """Upstreams outlive their servers by design (a restart re-attaches), but not a test:
    those the local provider started run in a directory under `data_dir`."""
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        with contextlib.suppress(OSError):
            if Path(os.readlink(cwd)).is_relative_to(data_dir):
                os.kill(int(cwd.parent.name), signal.SIGKILL)


def test_servers_started_together_on_an_empty_database_all_come_up(
    tmp_path: Path, pg_url: str
) -> None:
    with servers(tmp_path, pg_url, 3) as three:
        for server in three:
            assert server.client(None).get("/health").status_code == 200
        assert len({(server.data_dir / "master.key").read_text() for server in three}) == 1


RECONCILE_LOCK_HELD = """
    SELECT l.pid FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.database =
        (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def _freeze_while_leading(url: str, two: list[AuxenServer]) -> None:
    """SIGSTOP every server at a moment when one of them holds the reconcile lock."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if sql(url, RECONCILE_LOCK_HELD):
            for server in two:
                assert server.proc is not None
                server.proc.send_signal(signal.SIGSTOP)
            if sql(url, RECONCILE_LOCK_HELD):
                return
            for server in two:
                assert server.proc is not None
                server.proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError("never caught a server holding the reconcile lock")


def test_a_frozen_leader_gives_reconciliation_up(tmp_path: Path, pg_url: str) -> None:
    with servers(tmp_path, pg_url, 2, AUXEN_RECONCILE_LEADER_TIMEOUT_S="2") as two:
        _freeze_while_leading(pg_url, two)
        # Both servers are stopped (not dead), one of them mid-pass: another process
        # still gets to reconcile once the frozen leader's time is up.
        deadline = time.monotonic() + 60
        while True:
            result = two[0].cli("reconcile")
            if "nothing done" not in result.stdout:
                break
            assert time.monotonic() < deadline, "the frozen leader kept the lock"
        assert "interrupted streams closed: 0" in result.stdout, result.stdout
        for server in two:
            assert server.proc is not None
            server.proc.send_signal(signal.SIGCONT)
        # Thawed, the old leader finds its lock gone and carries on as a follower.
        time.sleep(3)
        assert all(server.client(None).get("/health").status_code == 200 for server in two)


def test_retries_destroys_and_queries_agree_across_servers(tmp_path: Path, pg_url: str) -> None:
    with servers(tmp_path, pg_url, 2) as (a, b):
        _, owner = a.workspace("owner@example.com", usd="5")
        model = str(tmp_path / "models" / "tiny")
        ask = {"model": model, "tier": "shared-small", "idempotency_key": "once"}

        # Twenty retries of one provision at once, spread over both servers: one instance,
        # and every answer's key works, the first one's included.
        def provision(n: int) -> dict[str, Any]:
            with (a, b)[n % 2].client(owner) as http:
                made = http.post("/v1/instances", json=ask)
            assert made.status_code in (200, 202), made.text  # 200: a replay
            return dict(made.json())

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(provision, range(20)))
        assert len({answer["id"] for answer in answers}) == 1
        instance_id = answers[0]["id"]
        keys = {answer["instance_key"] for answer in answers}
        assert None not in keys
        for key in keys:
            for server in (a, b):
                with server.client(key) as http:
                    assert http.get(f"/v1/instances/{instance_id}").status_code == 200
        with a.client(owner) as http:
            assert wait_for_state(http, instance_id, {"ready", "failed"})["state"] == "ready"
        (key,) = keys
        chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        with b.client(key) as http:  # b now has the instance and its key in its caches
            assert http.post(f"/v1/instances/{instance_id}/chat/completions", json=chat).is_success

        # Ten destroys at once over both servers: destroyed once, audited once.
        def destroy(n: int) -> str:
            with (a, b)[n % 2].client(owner) as http:
                gone = http.delete(f"/v1/instances/{instance_id}")
            assert gone.status_code == 200, gone.text
            return str(gone.json()["state"])

        with ThreadPoolExecutor(10) as pool:
            assert set(pool.map(destroy, range(10))) == {"destroyed"}
        # Destroyed on a means destroyed on b, at once (its shared server still runs).
        with b.client(key) as http:
            after = http.post(f"/v1/instances/{instance_id}/chat/completions", json=chat)
        assert after.status_code in (401, 404, 409), after.text
        audited = sql(
            pg_url,
            "SELECT count(*) FROM audit_event WHERE action = 'instance.destroy' AND target_id = :i",
            i=instance_id,
        )
        assert audited == [(1,)]


def _upstreams_of(instance_id: str) -> int:
    """How many upstream processes run for the instance (the local provider gives each
    one AUXEN_INSTANCE_ID in its environment; its watchdog carries it too, and is not
    an upstream)."""
    return sum(
        1
        for pid in _processes_with(f"AUXEN_INSTANCE_ID={instance_id}")
        if b"local_watchdog" not in _cmdline(pid)
    )


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_one_journey_over_three_servers(tmp_path: Path, pg_url: str) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('[gpu.cpu]\nhourly_usd = "36"\n')  # a cent a second: charges show
    knobs = {
        "AUXEN_PRICES_FILE": str(prices),
        "INSTANT_VLLM_TOKEN_DELAY_S": "0.05",
        "AUXEN_USAGE_STREAM_STALE_S": "2",
        "AUXEN_BILLING_TICK_S": "2",
    }
    with servers(tmp_path, pg_url, 3, **knobs) as (a, b, c):
        ws, owner = a.workspace("journey@example.com", usd="20")
        model = str(tmp_path / "models" / "tiny")
        with a.client(owner) as http:  # provisioned on a
            made = http.post("/v1/instances", json={"model": model})
            assert made.status_code == 202, made.text
            instance_id, key = made.json()["id"], made.json()["instance_key"]
            assert wait_for_state(http, instance_id, {"ready", "failed"})["state"] == "ready"
        assert _upstreams_of(instance_id) == 1
        chat = f"/v1/instances/{instance_id}/chat/completions"
        ask = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        with b.client(key) as http:  # queried on b
            asked = http.post(chat, json=ask)
            assert asked.status_code == 200, asked.text
        # Streamed on c, which dies (kill -9) in the middle of it.
        with httpx2.stream(
            "POST", c.url + chat, headers={"Authorization": f"Bearer {key}"},
            json={**ask, "max_tokens": 400, "stream": True}, timeout=60,
        ) as reply:  # fmt: skip
            assert reply.status_code == 200
            seen = 0
            for line in reply.iter_lines():
                seen += line.startswith("data: ")
                if seen == 10:
                    assert c.proc is not None
                    c.proc.kill()
                    c.proc.wait()
                    c.proc = None
                    break
        # Destroyed on b; the survivors close the dead stream and settle the money.
        with b.client(owner) as http:
            gone = http.delete(f"/v1/instances/{instance_id}")
            assert gone.status_code == 200 and gone.json()["state"] == "destroyed", gone.text
        deadline = time.monotonic() + 20
        while _upstreams_of(instance_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _upstreams_of(instance_id) == 0
        deadline = time.monotonic() + 60
        while True:
            rows = sql(
                pg_url,
                "SELECT stream, outcome, completion_tokens FROM usage_record "
                "WHERE instance_id = :i ORDER BY created_at",
                i=instance_id,
            )
            if [r[1] for r in rows] == ["ok", "interrupted"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert [(r[0], r[1]) for r in rows] == [(False, "ok"), (True, "interrupted")], rows
        assert rows[0][2] == 3 and rows[1][2] > 0  # the stream's last checkpoint
        assert not any(settled_exactly(pg_url, ws, wait_s=30))  # every GPU window closed
        charged = sql(
            pg_url,
            "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger_entry "
            "WHERE instance_id = :i AND kind = 'charge'",
            i=instance_id,
        )[0][0]
        assert charged > 0


def test_several_workers_are_refused_on_sqlite(tmp_path: Path) -> None:
    server = AuxenServer(tmp_path / "data", f"sqlite:///{tmp_path / 'auxen.db'}")
    served = subprocess.run(
        [sys.executable, "-m", "auxen.cli.main", "serve", "--workers", "2"],
        env=server.env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert served.returncode == 2
    assert "--workers" in served.stderr and "PostgreSQL" in served.stderr
