"""Fair use of inference: no key and no workspace takes every worker.

Each inference request (the OpenAI-compatible endpoints and `query_instance`, over REST
and MCP) is admitted before anything else happens to it: at most `*_concurrency`
requests in flight and `*_rpm` started per minute, per key and per workspace (token
buckets that refill continuously). Over either, the answer is 429 with `Retry-After` and
OpenAI's `x-ratelimit-*` headers, and nothing was reserved or sent. A stream holds its
slot until it ends. The counts are per control-plane process (each process admits its
own share); the defaults are generous, set them with AUXEN_INFERENCE_*.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from auxen.config import Settings
from auxen.tools.context import Caller
from auxen.tools.errors import RateLimited

# Buckets idle this long are forgotten (they are full again by then anyway).
_FORGET_AFTER_S = 300.0


class InferenceRateLimited(RateLimited):
    """Refused by a fairness limit; `headers` go on the 429."""

    def __init__(self, message: str, *, retry_after_s: int, headers: dict[str, str]) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.headers = headers


@dataclass
class _Bucket:
    tokens: float
    updated: float
    in_flight: int = 0


@dataclass
class _Limit:
    scope: str  # "key" or "workspace"
    rpm: int
    concurrency: int
    buckets: dict[str, _Bucket] = field(default_factory=dict)

    def bucket(self, name: str, now: float) -> _Bucket:
        found = self.buckets.get(name)
        if found is None:
            found = self.buckets[name] = _Bucket(tokens=float(self.rpm), updated=now)
        else:
            found.tokens = min(self.rpm, found.tokens + (now - found.updated) * self.rpm / 60)
            found.updated = now
        return found

    def refusal(self, bucket: _Bucket) -> tuple[str, int] | None:
        if bucket.in_flight >= self.concurrency:
            return f"{self.concurrency} requests at once", 1
        if bucket.tokens < 1:
            wait = math.ceil((1 - bucket.tokens) * 60 / self.rpm)
            return f"{self.rpm} requests a minute", max(wait, 1)
        return None

    def forget_idle(self, now: float) -> None:
        for name, bucket in list(self.buckets.items()):
            if bucket.in_flight == 0 and now - bucket.updated > _FORGET_AFTER_S:
                del self.buckets[name]


class Fairness:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.key = _Limit("key", settings.inference_key_rpm, settings.inference_key_concurrency)
        self.workspace = _Limit(
            "workspace", settings.inference_workspace_rpm, settings.inference_workspace_concurrency
        )
        self.clock = clock
        self._swept = clock()

    @asynccontextmanager
    async def admit(self, caller: Caller) -> AsyncIterator[dict[str, str]]:
        """Hold one slot for `caller` while the block runs (yields the headers to send),
        or InferenceRateLimited. No await before the slot is taken: admission is atomic
        within the process."""
        now = self.clock()
        if now - self._swept > _FORGET_AFTER_S:
            self.key.forget_idle(now)
            self.workspace.forget_idle(now)
            self._swept = now
        held = [
            (self.key, self.key.bucket(caller.key_id or f"ws:{caller.workspace_id}", now)),
            (self.workspace, self.workspace.bucket(caller.workspace_id, now)),
        ]
        for limit, bucket in held:
            refused = limit.refusal(bucket)
            if refused is not None:
                what, wait = refused
                raise InferenceRateLimited(
                    f"this {limit.scope} is limited to {what} on inference; retry after {wait} s",
                    retry_after_s=wait,
                    headers=_headers(held, retry_after_s=wait),
                )
        for _, bucket in held:
            bucket.tokens -= 1
            bucket.in_flight += 1
        try:
            yield _headers(held)
        finally:
            for _, bucket in held:
                bucket.in_flight -= 1


def _headers(
    held: list[tuple[_Limit, _Bucket]], retry_after_s: int | None = None
) -> dict[str, str]:
    """OpenAI's names, for the tighter of the key's and the workspace's request limits."""
    limit, bucket = min(held, key=lambda pair: pair[1].tokens)
    remaining = max(0, math.floor(bucket.tokens))
    until_full = (limit.rpm - bucket.tokens) * 60 / limit.rpm
    headers = {
        "x-ratelimit-limit-requests": str(limit.rpm),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": f"{max(until_full, 0):.3f}s",
    }
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return headers
