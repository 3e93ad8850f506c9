"""Nothing the local provider starts runs untracked after a crash (issue 18, item 8), and
an instance whose paid window is not extended stops by itself (issue 17, item 4).

The control plane (a real `auxen serve`) is killed with SIGKILL at each step of an
instance's bring-up and of its destroy (`AUXEN_CRASH_AT`, so the kill lands exactly at
that step), then started again. The instance's upstream (`tests/instant_vllm.py`) starts
a child that ignores SIGTERM, as vLLM's engine workers can. Processes are counted by the
instance id every one of them carries: after the restart an interrupted bring-up ends
with exactly one server, and after the destroy with none at all, the stubborn child
included. The reconciler also ends processes of instances it does not know.

With the control plane killed for good, a priced instance's own watchdog stops it at the
end of its last paid window (plus its slack); started again, the control plane settles
what it finds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.ledger_checks import settled_exactly, sql
from tests.servers import AuxenServer, instant_env, wait_for_state

BRING_UP_STEPS = ["bring_up.provisioning", "local.spawned", "bring_up.starting"]
DESTROY_STEPS = ["destroy.stopping", "local.sent_SIGTERM", "local.terminated"]
SLACK_S = 1.0


def instance_processes(instance_id: str) -> list[tuple[int, int]]:
    """(pid, session) of every live process carrying the instance's id."""
    marker = f"AUXEN_INSTANCE_ID={instance_id}".encode()
    found = []
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
            found.append((int(entry.name), int(fields[3])))
    return found


def end_deployment_processes(data_dir: Path) -> None:
    """Kill every process a server on `data_dir` started (instances outlive their
    control plane on purpose; a test leaves none behind)."""
    marker = f"AUXEN_INSTANCES_ROOT={(data_dir / 'instances').resolve()}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                os.kill(int(environ.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def servers_of(instance_id: str) -> list[int]:
    return [pid for pid, sid in instance_processes(instance_id) if pid == sid]


def until(check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{check} never held")


class Drill:
    def __init__(self, root: Path, crash_at: str, **extra_env: str) -> None:
        models = root / "models" / "tiny"
        models.mkdir(parents=True)
        (models / "config.json").write_text(json.dumps({"model_type": "llama"}))
        self.model = str(models)
        self.server = AuxenServer(
            root / "data",
            f"sqlite:///{root / 'auxen.db'}",
            {
                **instant_env(INSTANT_VLLM_STARTUP_DELAY_S="1", INSTANT_VLLM_STUBBORN_CHILD="1"),
                "AUXEN_MODELS_DIR": str(root / "models"),
                "AUXEN_INSTANCE_LEASE_S": "2",
                "AUXEN_LOCAL_STOP_GRACE_S": "1",
                "AUXEN_CRASH_AT": crash_at,
                **extra_env,
            },
        )
        self.server.start()
        self.workspace_id, self.key = self.server.workspace("crash@example.com", usd="5")
        self.instance_id = ""

    def http(self) -> httpx2.Client:
        return self.server.client(self.key)

    def crashed(self) -> None:
        """The server killed itself at its crash point; start it again without one."""
        assert self.server.proc is not None
        assert self.server.proc.wait(timeout=120) == -signal.SIGKILL
        self.server.proc = None
        del self.server.extra_env["AUXEN_CRASH_AT"]
        self.server.start()

    def sql(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        return sql(self.server.database_url, query, **params)

    def provision(self) -> None:
        try:
            with self.http() as http:
                made = http.post("/v1/instances", json={"model": self.model})
            assert made.status_code == 202, made.text
            self.instance_id = made.json()["id"]
        except httpx2.HTTPError:  # the crash came before the answer
            rows = sql(self.server.database_url, "SELECT id FROM instance")
            self.instance_id = rows[0][0]

    def stop(self) -> None:
        self.server.stop_clean()
        end_deployment_processes(self.server.data_dir)  # never left behind


@pytest.fixture
def drill(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Drill]:
    world = Drill(tmp_path, request.param)
    try:
        yield world
    finally:
        world.stop()


@pytest.fixture
def priced(tmp_path: Path) -> Iterator[Drill]:
    """A priced local GPU ($3.60/h) billed in 3-second windows, a watchdog that stops
    an instance one second after its paid end; no crash point."""
    prices = tmp_path / "prices.toml"
    prices.write_text('[gpu.cpu]\nhourly_usd = "3.60"\n')
    world = Drill(
        tmp_path,
        "none",
        AUXEN_PRICES_FILE=str(prices),
        AUXEN_BILLING_TICK_S="3",
        AUXEN_WATCHDOG_SLACK_S=str(SLACK_S),
    )
    try:
        yield world
    finally:
        world.stop()


@pytest.mark.parametrize("drill", BRING_UP_STEPS, indirect=True)
def test_a_crash_during_bring_up_leaves_one_server_then_none(drill: Drill) -> None:
    drill.provision()
    drill.crashed()
    with drill.http() as http:
        ready = wait_for_state(http, drill.instance_id, {"ready", "failed"}, timeout=120)
        assert ready["state"] == "ready", ready["last_error"]
        assert len(servers_of(drill.instance_id)) == 1, instance_processes(drill.instance_id)
        assert http.delete(f"/v1/instances/{drill.instance_id}").status_code == 200
        wait_for_state(http, drill.instance_id, {"destroyed"})
    assert instance_processes(drill.instance_id) == []


@pytest.mark.parametrize("drill", DESTROY_STEPS, indirect=True)
def test_a_crash_during_destroy_leaves_no_process(drill: Drill) -> None:
    drill.provision()
    with drill.http() as http:
        ready = wait_for_state(http, drill.instance_id, {"ready", "failed"}, timeout=120)
        assert ready["state"] == "ready", ready["last_error"]
        # The server and its child that ignores SIGTERM (and the watchdog leading them).
        until(lambda: len(instance_processes(drill.instance_id)) >= 2)
        with pytest.raises(httpx2.HTTPError):
            http.delete(f"/v1/instances/{drill.instance_id}")
    drill.crashed()
    with drill.http() as http:
        wait_for_state(http, drill.instance_id, {"destroyed"})
    until(lambda: instance_processes(drill.instance_id) == [], timeout=30)


@pytest.mark.parametrize("drill", ["none"], indirect=True)
def test_the_reconciler_ends_processes_of_instances_it_does_not_know(drill: Drill) -> None:
    instances = drill.server.data_dir / "instances"
    instances.mkdir(parents=True, exist_ok=True)
    drill.instance_id = "inst_nobody"
    env = {
        **os.environ,
        "AUXEN_INSTANCE_ID": drill.instance_id,
        "AUXEN_INSTANCES_ROOT": str(instances.resolve()),
    }
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        env=env,
        start_new_session=True,
    )
    try:
        until(lambda: stray.poll() is not None, timeout=60)
    finally:
        stray.kill()
        stray.wait()


def test_an_unpaid_instance_stops_itself_while_no_control_plane_runs(priced: Drill) -> None:
    priced.provision()
    with priced.http() as http:
        ready = wait_for_state(http, priced.instance_id, {"ready", "failed"}, timeout=120)
        assert ready["state"] == "ready", ready["last_error"]
    until(lambda: len(instance_processes(priced.instance_id)) >= 2)
    assert priced.server.proc is not None
    priced.server.proc.kill()  # kill -9, and nothing starts it again for now
    priced.server.proc.wait()
    priced.server.proc = None
    # Its own watchdog ends every process of it, the child that ignores SIGTERM included,
    # once the last window the control plane reserved has run out.
    until(lambda: instance_processes(priced.instance_id) == [], timeout=120)
    paid_until = priced.sql(
        "SELECT MAX(window_end) FROM reservation WHERE instance_id = :i", i=priced.instance_id
    )[0][0]
    log = (priced.server.data_dir / "instances" / priced.instance_id / "vllm.log").read_text()
    stopped = [line for line in log.splitlines() if line.startswith("auxen watchdog:")]
    assert len(stopped) == 1, log[-2000:]
    deadline = float(stopped[0].split("ended at ")[1].split()[0])
    paid = datetime.fromisoformat(str(paid_until)).replace(tzinfo=UTC).timestamp()
    assert abs(deadline - (paid + SLACK_S)) < 1  # what was paid (+ slack), not a guess
    # Started again, the control plane finds the instance gone and settles its windows.
    priced.server.start()
    with priced.http() as http:
        failed = wait_for_state(http, priced.instance_id, {"failed"})
    assert "paid window ended" in failed["last_error"]
    # Every window it reserved is closed, each charged or released exactly once.
    assert not any(settled_exactly(priced.server.database_url, priced.workspace_id, wait_s=30))
