"""Starting real Auxen servers (`auxen serve` subprocesses) for tests."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

REPO = Path(__file__).resolve().parent.parent
# How long `auxen serve` may take to answer /health (raise it on a loaded machine).
START_TIMEOUT_S = float(os.environ.get("AUXEN_TEST_SERVER_START_S", "60"))
VLLM_PYTHON = Path(os.environ.get("AUXEN_TEST_VLLM_PYTHON", REPO / ".venv-vllm/bin/python"))
# Servers serve local models from inside their models directory only; tests write model
# directories under pytest's temporary root, so that is every test server's default
# (set by tests/conftest.py; a test may name its own with AUXEN_MODELS_DIR).
MODELS_ROOT: Path | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def vllm_env() -> dict[str, str]:
    """Settings that make the local provider run vLLM's CPU build with the tiny model."""
    return {
        "AUXEN_VLLM_COMMAND": f"{VLLM_PYTHON} -m vllm.entrypoints.openai.api_server",
        "AUXEN_VLLM_MAX_MODEL_LEN": "2048",
        "AUXEN_VLLM_DTYPE": "float32",
        "AUXEN_VLLM_CPU_KVCACHE_GIB": "1",
        "AUXEN_VLLM_READY_TIMEOUT_S": "300",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }


def instant_env(**knobs: str) -> dict[str, str]:
    """Settings that make the local provider launch `tests/instant_vllm.py`, an instant
    upstream taking vLLM's command line, instead of vLLM (for tests where vLLM itself is
    not the point); `knobs` are its INSTANT_VLLM_* variables."""
    return {
        **vllm_env(),
        "AUXEN_VLLM_COMMAND": f"{sys.executable} {REPO / 'tests' / 'instant_vllm.py'}",
        "AUXEN_VLLM_READY_TIMEOUT_S": "60",
        **knobs,
    }


@dataclass
class AuxenServer:
    data_dir: Path
    database_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"server-{self.port}.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUXEN_")}
        env.update(
            AUXEN_DATA_DIR=str(self.data_dir),
            AUXEN_DATABASE_URL=self.database_url,
            AUXEN_PORT=str(self.port),
            AUXEN_RECONCILE_INTERVAL_S="1",
            AUXEN_USAGE_FLUSH_INTERVAL_S="0.1",
            # Tests bill in windows of a few seconds, and on two busy cores the control
            # plane can extend one late while vLLM loads; an instance's watchdog must not
            # stop it for that. Tests of the watchdog itself set their own slack.
            AUXEN_WATCHDOG_SLACK_S="60",
        )
        env.update(vllm_env())
        if MODELS_ROOT is not None:
            env["AUXEN_MODELS_DIR"] = str(MODELS_ROOT)
        env.update(self.extra_env)
        return env

    def cli(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "auxen.cli.main", *args],
            env={**self.env(), "AUXEN_URL": self.url, **env},
            capture_output=True,
            text=True,
            check=check,
            timeout=600,
        )

    def workspace(
        self, email: str, *, test: bool = False, usd: str | None = None
    ) -> tuple[str, str]:
        """`auxen init`: a new workspace's id and its first account key; with `usd`, the
        workspace is also granted that much in credits (`auxen credits grant`)."""
        result = self.cli("init", "--email", email, *(["--test"] if test else []))
        found = re.search(r"workspace (ws_\w+)", result.stdout)
        key = next(
            (x for x in result.stdout.split() if x.startswith(("auxen_live_", "auxen_test_"))),
            None,
        )
        if found is None or key is None:
            raise AssertionError(f"auxen init printed no key:\n{result.stdout}\n{result.stderr}")
        if usd is not None:
            granted = self.cli(
                "credits", "grant", "--workspace", found.group(1), "--usd", usd,
                "--reference", f"grant-{email}", *(["--test"] if test else []),
            )  # fmt: skip
            assert "granted" in granted.stdout, granted.stdout + granted.stderr
        return found.group(1), key

    def init_workspace(self, email: str, *, test: bool = False, usd: str | None = None) -> str:
        return self.workspace(email, test=test, usd=usd)[1]

    def start(self) -> AuxenServer:
        return self.spawn().wait_healthy()

    def spawn(self, *args: str) -> AuxenServer:
        """Start `auxen serve` (with `args`) without waiting for it (see wait_healthy)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "auxen.cli.main", "serve", *args],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_healthy(self) -> AuxenServer:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"auxen serve exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx2.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx2.HTTPError:
                pass
            time.sleep(0.2)
        self.stop(signal.SIGKILL)  # never left running behind a failed fixture
        raise RuntimeError(f"auxen serve did not become healthy in {START_TIMEOUT_S:.0f} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)
        self.proc = None

    def stop_clean(self) -> str:
        """Stop, and fail the test if the server logged a traceback; the log's text."""
        self.stop()
        log = self.log_path.read_text()
        assert "Traceback" not in log, log[-3000:]
        return log

    def client(self, key: str | None) -> httpx2.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx2.Client(base_url=self.url, headers=headers, timeout=120)


def wait_for_state(
    http: httpx2.Client, instance_id: str, states: set[str], timeout: float = 400
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current: dict[str, Any] = http.get(f"/v1/instances/{instance_id}").json()
        if current["state"] in states:
            return current
        time.sleep(0.5)
    raise AssertionError(f"{instance_id} never reached {states}; last: {current}")


@contextmanager
def sqlite_server(root: Path) -> Iterator[AuxenServer]:
    """A started server on a SQLite file under `root`; stopped at the end, failing the
    test if it logged a traceback."""
    server = AuxenServer(root / "data", f"sqlite:///{root / 'auxen.db'}").start()
    try:
        yield server
    finally:
        server.stop_clean()


def kill_instance_processes(data_dir: Path) -> None:
    """Stop the upstream processes the local provider started under `data_dir`: they
    outlive `auxen serve` on purpose (the next start re-attaches), and a shared host is
    in a workspace no key reaches, so a test ends them itself."""
    for state in (data_dir / "instances").glob("*/provider.json"):
        with suppress(ProcessLookupError, PermissionError, ValueError, KeyError):
            os.killpg(int(json.loads(state.read_text())["pid"]), signal.SIGKILL)


def shared_small_setup(root: Path, usd_per_million: str = "100") -> tuple[Path, Path]:
    """A models directory with one model (`tiny`) the instant upstream can serve, and a
    prices file pricing shared-small tokens at `usd_per_million` in and out."""
    models = root / "models"
    (models / "tiny").mkdir(parents=True)
    (models / "tiny" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    prices = root / "prices.toml"
    prices.write_text(
        f'[shared_small]\ninput_usd_per_million = "{usd_per_million}"\n'
        f'output_usd_per_million = "{usd_per_million}"\n'
    )
    return models, prices
