"""The watchdog that travels with a local instance: it starts the instance's vLLM server
as its own child and stops it once the instance's paid window has ended without being
extended, whether or not any control plane is running.

The control plane extends the window by rewriting the `paid_until` file in the instance's
directory (seconds since the epoch); while there is no such file there is no deadline (an
instance nobody pays by the hour). The watchdog leads the instance's session: when its
server exits, or it is asked to stop, or the window ends, it ends everything else the
instance started too (SIGKILL after a grace for what ignores SIGTERM), then exits with
the server's status.

    python -m auxen.inference.providers.local_watchdog PAID_UNTIL_FILE GRACE_S -- ARGV...

Standard library only: it starts before anything heavy could be imported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from auxen.inference.providers.local_procs import (
    INSTANCE_MARKER,
    ROOT_MARKER,
    end_processes,
)

CHECK_S = 0.5


def paid_until(path: Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def main(args: list[str]) -> int:
    deadline_file, grace_s = Path(args[0]), float(args[1])
    argv = args[args.index("--") + 1 :]
    root, instance_id = Path(os.environ[ROOT_MARKER]), os.environ[INSTANCE_MARKER]
    stop_asked = False

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stop_asked
        stop_asked = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    server = subprocess.Popen(argv)
    session: int | None = os.getsid(0)
    while server.poll() is None and not stop_asked:
        until = paid_until(deadline_file)
        if until is not None and time.time() >= until:
            print(
                f"auxen watchdog: the paid window ended at {until:.0f} and was not "
                "extended; stopping the instance",
                flush=True,
            )
            session = None  # unpaid: every process of the instance, whatever its session
            break
        time.sleep(CHECK_S)
    # The rest of the session (the server, its workers), never the watchdog itself.
    end_processes(root, instance_id, session, grace_s)
    code = server.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
