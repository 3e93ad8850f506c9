"""Finding and ending the processes the local provider started, even after a crash.

Every process the provider starts (an instance's watchdog, its vLLM server, and whatever
vLLM forks) carries two markers in its environment: the instance id and the instances
directory of the deployment that started it. A process's environment is fixed at exec
and inherited by its children, so a restarted control plane finds them all without any
file of its own (a crash between starting a server and recording it loses nothing), and
never takes another deployment's processes, or a reused pid, for one of its own.

Standard library only: the watchdog (`local_watchdog`) uses it too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

INSTANCE_MARKER = "AUXEN_INSTANCE_ID"
ROOT_MARKER = "AUXEN_INSTANCES_ROOT"
POLL_S = 0.1


@dataclass(frozen=True)
class MarkedProcess:
    pid: int
    sid: int  # its session: the instance's watchdog started one per server
    instance_id: str
    port: int | None  # the --port on its command line, if any

    @property
    def leads(self) -> bool:
        return self.pid == self.sid


def markers(root: Path, instance_id: str) -> dict[str, str]:
    """The environment entries that make a process findable as the instance's."""
    return {INSTANCE_MARKER: instance_id, ROOT_MARKER: str(root.resolve())}


def marked_processes(root: Path, instance_id: str | None = None) -> list[MarkedProcess]:
    """Live processes (zombies excluded) this deployment started, optionally of one
    instance. Only this user's processes can be read, and only they can be ours."""
    want_root = f"{ROOT_MARKER}={root.resolve()}".encode()
    found: list[MarkedProcess] = []
    uid = os.getuid()
    entries: list[os.DirEntry[str]] = []
    with contextlib.suppress(OSError):
        entries = list(os.scandir("/proc"))
    for entry in entries:
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            if entry.stat().st_uid != uid:
                continue
            environ = Path(entry.path, "environ").read_bytes().split(b"\0")
            if want_root not in environ:
                continue
            ours = next(e for e in environ if e.startswith(f"{INSTANCE_MARKER}=".encode()))
            owner = ours.split(b"=", 1)[1].decode()
            if instance_id is not None and owner != instance_id:
                continue
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] in ("Z", "X"):  # exited; only its parent's wait is missing
                continue
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            port = int(argv[argv.index(b"--port") + 1]) if b"--port" in argv else None
            found.append(MarkedProcess(int(entry.name), int(fields[3]), owner, port))
    return found


def end_processes(
    root: Path,
    instance_id: str,
    session: int | None = None,
    grace_s: float = 15.0,
    on_sent: Callable[[int], None] = lambda _sig: None,
) -> None:
    """End the instance's processes (of one session, or all of them): SIGTERM, then
    SIGKILL for whatever is still alive after `grace_s` (a worker that ignores SIGTERM).
    A session whose leader is gone is still ended. Never signals the calling process.
    `on_sent` hears each signal once it has been sent (crash drills)."""

    def targets() -> list[int]:
        return [
            p.pid
            for p in marked_processes(root, instance_id)
            if (session is None or p.sid == session) and p.pid != os.getpid()
        ]

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        pids = targets()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        if session is not None and session != os.getsid(0):
            # Members still alive keep the group's id from being reused: this reaches
            # only the session's own group, including anything that dropped the markers.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(session, sig)
        on_sent(sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and targets():
            time.sleep(POLL_S)
