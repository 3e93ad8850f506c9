"""Crash points for drills: with `AUXEN_CRASH_AT=<name>` the process kills itself with
SIGKILL (exactly what `kill -9` does) when it reaches the step of that name, so tests
crash the control plane at each step of a bring-up or destroy instead of hoping a timed
kill lands there. Unset, as in any real deployment, it does nothing.
"""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("AUXEN_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
