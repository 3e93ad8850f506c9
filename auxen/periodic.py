"""Background passes repeated on an interval, stopped between passes.

Cancelling a task in the middle of a database statement leaves its connection to be
rolled back by the pool's finaliser, inside a cancelled task: the rollback fails and the
pool logs a traceback, and a half-done pass may hold a lock until the server is gone.
So a stop asks the loop to finish the pass it is in and not start another; only a pass
that outlives the grace period is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

STOP_GRACE_S = 15.0


class Periodic:
    """Runs `run_once` now and then every `interval_s` seconds until `stop()`."""

    def __init__(
        self, name: str, run_once: Callable[[], Awaitable[object]], interval_s: float
    ) -> None:
        self.name = name
        self._run_once = run_once
        self.interval_s = interval_s
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, *, first_after_s: float = 0.0) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._loop(first_after_s), name=self.name)

    async def _loop(self, first_after_s: float) -> None:
        if await self._wait(first_after_s):
            return
        while True:
            try:
                await self._run_once()
            except Exception:
                log.exception("%s pass failed; retrying", self.name)
            if await self._wait(self.interval_s):
                return

    async def _wait(self, seconds: float) -> bool:
        """Sleep `seconds`, waking early on stop; whether the loop should end."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Let the current pass finish (up to `grace_s`), then end the loop."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        done, _ = await asyncio.wait({task}, timeout=grace_s)
        if not done:
            log.warning("%s pass outlived %.0f s at shutdown; cancelling it", self.name, grace_s)
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
