"""Several `auxen serve` processes on one PostgreSQL database, as an operator runs them
(one data directory and master key, instant upstreams): they start together, hand
reconcile leadership on when one freezes, and agree on what a destroy means."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PG_ADMIN_URL, POSTGRES, _pg_admin
from tests.ledger_checks import sql
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
            assert made.status_code == 202, made.text
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
