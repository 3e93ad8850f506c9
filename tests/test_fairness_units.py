"""The fair-use arithmetic (`auxen/inference/fairness.py`) on a clock the test moves."""

from __future__ import annotations

import asyncio

import pytest

from auxen.config import Settings
from auxen.inference.fairness import Fairness, InferenceRateLimited
from auxen.tools.context import Caller


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fairness(clock: Clock, **limits: int) -> Fairness:
    return Fairness(Settings(**limits), clock=clock)  # type: ignore[arg-type]


def test_concurrency_is_per_key_and_per_workspace() -> None:
    async def run() -> None:
        fair = _fairness(Clock(), inference_key_concurrency=1, inference_workspace_concurrency=2)
        one, two, three = (Caller(workspace_id="ws_a", livemode=True, key_id=k) for k in "123")
        other = Caller(workspace_id="ws_b", livemode=True, key_id="4")
        async with fair.admit(one), fair.admit(two):
            with pytest.raises(InferenceRateLimited) as refused:
                async with fair.admit(one):
                    pass
            assert refused.value.headers["Retry-After"] == "1"
            with pytest.raises(InferenceRateLimited, match="workspace"):
                async with fair.admit(three):
                    pass
            async with fair.admit(other) as headers:
                assert headers["x-ratelimit-limit-requests"] == "3000"
        async with fair.admit(one):
            pass

    asyncio.run(run())


def test_requests_per_minute_refill_continuously() -> None:
    async def run() -> None:
        clock = Clock()
        fair = _fairness(clock, inference_key_rpm=6, inference_workspace_rpm=100)
        caller = Caller(workspace_id="ws_a", livemode=True, key_id="1")
        for left in range(5, -1, -1):
            async with fair.admit(caller) as headers:
                assert headers["x-ratelimit-remaining-requests"] == str(left)
        with pytest.raises(InferenceRateLimited) as refused:
            async with fair.admit(caller):
                pass
        assert refused.value.retry_after_s == 10  # one request every 10 s at 6 a minute
        clock.now += 10
        async with fair.admit(caller):
            pass

    asyncio.run(run())
