"""The `local` provider: a real vLLM OpenAI server as a child process on this host.

Each instance gets a directory under `<data_dir>/instances/<id>/` holding its log and a
`provider.json` (pid, port, process start time) so a restarted control plane can find and
re-attach to it. The process runs in its own process group, so terminating it kills the
engine workers too. Its upstream key travels in `VLLM_API_KEY` (not argv, where any local
user could read it in the process list) and never leaves the control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import deque
from pathlib import Path

from auxen.config import Settings
from auxen.inference.model_paths import ModelPathRefused, is_local_path, resolve_local_model
from auxen.inference.providers.base import (
    LaunchSpec,
    OwnedResource,
    ProviderError,
    Resource,
    ResourceStatus,
)

STATE_FILE = "provider.json"
LOG_FILE = "vllm.log"
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
        if is_local_path(spec.model):  # checked when asked for; again before it runs
            try:
                path = resolve_local_model(spec.model, self.settings.resolved_models_dir)
            except ModelPathRefused as exc:
                raise ProviderError(str(exc)) from None
            spec = dataclasses.replace(spec, model=str(path))
        workdir = self.root / spec.instance_id
        workdir.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        argv = self._argv(spec, port)
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SECRET_ENV_PREFIXES)}
        env["VLLM_API_KEY"] = spec.upstream_api_key
        if spec.hf_token:
            env["HF_TOKEN"] = spec.hf_token  # the workspace's own (BYOK), for gated models
        env["AUXEN_INSTANCE_ID"] = spec.instance_id  # lets operators (and tests) find it
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
        record = {"pid": proc.pid, "port": port, "start_time": _start_time(proc.pid)}
        (workdir / STATE_FILE).write_text(json.dumps(record))
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

    async def status(self, provider_id: str) -> ResourceStatus:
        pid = int(provider_id)
        child = self._children.get(pid)
        if child is not None:
            return ResourceStatus.RUNNING if child.poll() is None else ResourceStatus.EXITED
        return ResourceStatus.RUNNING if self._is_ours(pid) else ResourceStatus.GONE

    async def describe(self, provider_id: str) -> str:
        status = await self.status(provider_id)
        return f"vLLM process {provider_id} {status.value}"

    async def terminate(self, provider_id: str, instance_id: str) -> None:
        if not instance_id or "/" in instance_id or instance_id in (".", ".."):
            raise ValueError(f"not an instance id: {instance_id!r}")  # never rmtree the root
        workdir = self.root / instance_id
        if not provider_id:  # crashed between spawning and recording: the file knows
            with contextlib.suppress(OSError, ValueError, KeyError):
                provider_id = str(json.loads((workdir / STATE_FILE).read_text())["pid"])
        if provider_id:
            await asyncio.to_thread(self._kill_group, int(provider_id))
        await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def list_owned(self) -> list[OwnedResource]:
        owned: list[OwnedResource] = []
        if not self.root.exists():
            return owned
        for state_file in self.root.glob(f"*/{STATE_FILE}"):
            try:
                record = json.loads(state_file.read_text())
            except (OSError, ValueError):
                continue
            pid = int(record["pid"])
            if await self.status(str(pid)) is ResourceStatus.RUNNING:
                owned.append(
                    OwnedResource(
                        instance_id=state_file.parent.name,
                        provider_id=str(pid),
                        endpoint=f"http://127.0.0.1:{record['port']}",
                    )
                )
        return owned

    async def logs_tail(self, provider_id: str, instance_id: str, lines: int = 30) -> str:
        log = self.root / instance_id / LOG_FILE
        if not log.exists():
            return ""
        with log.open("rb") as fh:
            tail = deque(fh, maxlen=lines)
        return b"".join(tail).decode(errors="replace").strip()

    def _is_ours(self, pid: int) -> bool:
        """A live process whose start time matches one we launched (pids get reused)."""
        for state_file in self.root.glob(f"*/{STATE_FILE}"):
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(state_file.read_text())
                if int(record["pid"]) == pid:
                    started = _start_time(pid)
                    return started is not None and started == record["start_time"]
        return False

    def _kill_group(self, pid: int) -> None:
        child = self._children.pop(pid, None)
        if child is None and not self._is_ours(pid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if child is not None and child.poll() is not None and not _group_alive(pid):
                return
            if child is None and not _group_alive(pid):
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        if child is not None:
            child.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_time(pid: int) -> int | None:
    """Process start time in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited already
        return None
    return int(fields[19])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg succeeds while zombies remain; count only live members.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False
