"""The `local` provider: a real vLLM OpenAI server as a child process on this host.

Each instance gets a directory under `<data_dir>/instances/<id>/` holding its log, a
`provider.json` (pid, port: for operators) and `paid_until`. Its server runs under a
watchdog (`local_watchdog`) that leads a session of its own and stops the instance when
its paid window ends without the control plane extending it (`keep_until`), even while
no control plane runs. Every process of an instance carries the instance id and this
deployment's instances directory in its environment (`local_procs`), which is how a
restarted control plane finds them all, whatever crashed when, and ends them: the whole
session, even when its leader is gone, SIGKILL after a grace for what ignores SIGTERM.
The upstream key travels in `VLLM_API_KEY` (not argv, where any local user could read it
in the process list) and never leaves the control plane.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections import deque
from datetime import datetime
from pathlib import Path

from auxen.config import Settings
from auxen.faults import crash_point
from auxen.inference.model_paths import ModelPathRefused, is_local_path, resolve_local_model
from auxen.inference.providers.base import (
    LaunchSpec,
    OwnedResource,
    ProviderError,
    Resource,
    ResourceStatus,
)
from auxen.inference.providers.local_procs import (
    MarkedProcess,
    end_processes,
    marked_processes,
    markers,
)

STATE_FILE = "provider.json"
LOG_FILE = "vllm.log"
PAID_UNTIL_FILE = "paid_until"
# Control-plane secrets never reach the child's environment.
_SECRET_ENV_PREFIXES = ("AUXEN_", "STRIPE_", "RUNPOD_")


class LocalVllmProvider:
    name = "local"
    accounts_per_workspace = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ready_timeout_s = settings.vllm_ready_timeout_s
        self.root = settings.instances_dir
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    async def close(self) -> None:
        """Nothing to release: instance processes outlive the control plane on purpose."""

    async def create(self, spec: LaunchSpec) -> Resource:
        running = await asyncio.to_thread(self._servers, spec.instance_id)
        if running:  # an earlier create whose answer was lost (a crash) made it already
            return _resource(running[0])
        if is_local_path(spec.model):  # checked when asked for; again before it runs
            try:
                path = resolve_local_model(spec.model, self.settings.resolved_models_dir)
            except ModelPathRefused as exc:
                raise ProviderError(str(exc)) from None
            spec = dataclasses.replace(spec, model=str(path))
        workdir = self.root / spec.instance_id
        workdir.mkdir(parents=True, exist_ok=True)
        if spec.paid_until is not None:
            _write_paid_until(workdir, spec.paid_until)
        port = _free_port()
        argv = [
            sys.executable, "-m", "auxen.inference.providers.local_watchdog",
            str(workdir / PAID_UNTIL_FILE), str(self.settings.local_stop_grace_s),
            "--", *self._argv(spec, port),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SECRET_ENV_PREFIXES)}
        env["VLLM_API_KEY"] = spec.upstream_api_key
        if spec.hf_token:
            env["HF_TOKEN"] = spec.hf_token  # the workspace's own (BYOK), for gated models
        env.update(markers(self.root, spec.instance_id))
        if self.settings.vllm_cpu_kvcache_gib is not None:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.settings.vllm_cpu_kvcache_gib)
        with (workdir / LOG_FILE).open("ab") as log:
            try:
                proc = subprocess.Popen(  # noqa: ASYNC220 (spawning returns at once)
                    argv,
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ProviderError(
                    f"cannot start vLLM ({argv[0]}): {exc.strerror}; "
                    "set AUXEN_VLLM_COMMAND to a working vLLM server command"
                ) from exc
        self._children[proc.pid] = proc
        crash_point("local.spawned")
        (workdir / STATE_FILE).write_text(json.dumps({"pid": proc.pid, "port": port}))
        return Resource(provider_id=str(proc.pid), endpoint=f"http://127.0.0.1:{port}")

    def _argv(self, spec: LaunchSpec, port: int) -> list[str]:
        argv = list(self.settings.vllm_argv)
        # `vllm serve MODEL` takes the model positionally; the api_server module wants --model.
        argv += [spec.model] if argv and argv[-1] == "serve" else ["--model", spec.model]
        argv += [
            "--host", "127.0.0.1",
            "--port", str(port),
            "--served-model-name", spec.served_model_name,
        ]  # fmt: skip
        if self.settings.vllm_max_model_len is not None:
            argv += ["--max-model-len", str(self.settings.vllm_max_model_len)]
        if self.settings.vllm_dtype is not None:
            argv += ["--dtype", self.settings.vllm_dtype]
        return argv

    def _servers(self, instance_id: str) -> list[MarkedProcess]:
        """The instance's live session leaders (its watchdogs: one, unless a crash
        left a duplicate)."""
        return [p for p in marked_processes(self.root, instance_id) if p.leads]

    async def status(self, provider_id: str) -> ResourceStatus:
        pid = int(provider_id)
        child = self._children.get(pid)
        if child is not None:
            return ResourceStatus.RUNNING if child.poll() is None else ResourceStatus.EXITED
        leaders = await asyncio.to_thread(marked_processes, self.root)
        alive = any(p.pid == pid and p.leads for p in leaders)
        return ResourceStatus.RUNNING if alive else ResourceStatus.GONE

    async def describe(self, provider_id: str) -> str:
        status = await self.status(provider_id)
        return f"vLLM process {provider_id} {status.value}"

    async def terminate(self, provider_id: str, instance_id: str) -> None:
        """End the session `provider_id` leads (every process of the instance when it
        is empty: a crash before it was recorded), leader alive or not, then delete the
        instance's directory."""
        workdir = self._workdir(instance_id)
        session = int(provider_id) if provider_id else None
        await asyncio.to_thread(
            end_processes, self.root, instance_id, session, self.settings.local_stop_grace_s,
            lambda sig: crash_point(f"local.sent_{signal.Signals(sig).name}"),
        )  # fmt: skip
        for pid, child in list(self._children.items()):
            if child.poll() is not None:  # reap what has ended
                self._children.pop(pid, None)
        crash_point("local.terminated")
        await asyncio.to_thread(shutil.rmtree, workdir, True)

    def _workdir(self, instance_id: str) -> Path:
        if not instance_id or "/" in instance_id or instance_id in (".", ".."):
            raise ValueError(f"not an instance id: {instance_id!r}")  # never rmtree the root
        return self.root / instance_id

    async def list_owned(self) -> list[OwnedResource]:
        """Every session of this deployment's instance processes: a live leader is a
        server; a session whose leader is gone is left-over workers (`running` False)."""
        found = await asyncio.to_thread(marked_processes, self.root)
        sessions: dict[tuple[str, int], list[MarkedProcess]] = {}
        for process in found:
            sessions.setdefault((process.instance_id, process.sid), []).append(process)
        owned: list[OwnedResource] = []
        for (instance_id, sid), members in sessions.items():
            leader = next((p for p in members if p.leads), None)
            if leader is not None:
                owned.append(_owned(leader))
            else:
                owned.append(OwnedResource(instance_id, str(sid), endpoint="", running=False))
        return owned

    async def keep_until(self, provider_id: str, instance_id: str, paid_until: datetime) -> None:
        workdir = self._workdir(instance_id)
        if workdir.is_dir():
            await asyncio.to_thread(_write_paid_until, workdir, paid_until)

    async def logs_tail(self, provider_id: str, instance_id: str, lines: int = 30) -> str:
        log = self.root / instance_id / LOG_FILE
        if not log.exists():
            return ""
        with log.open("rb") as fh:
            tail = deque(fh, maxlen=lines)
        return b"".join(tail).decode(errors="replace").strip()


def _resource(leader: MarkedProcess) -> Resource:
    return Resource(provider_id=str(leader.pid), endpoint=f"http://127.0.0.1:{leader.port}")


def _owned(leader: MarkedProcess) -> OwnedResource:
    return OwnedResource(leader.instance_id, str(leader.pid), f"http://127.0.0.1:{leader.port}")


def _write_paid_until(workdir: Path, paid_until: datetime) -> None:
    """Atomically, so the watchdog never reads half a number."""
    tmp = workdir / f".{PAID_UNTIL_FILE}.tmp"
    tmp.write_text(f"{paid_until.timestamp():.3f}")
    tmp.replace(workdir / PAID_UNTIL_FILE)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
