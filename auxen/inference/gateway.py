"""Reaching a caller's instance: which upstream serves it, whether this caller may use
it, and a meter for each call. The HTTP proxy and the `query_instance` operation both
go through here, so both authorize and meter the same way.

Prompts and completions pass through in memory only; a call leaves a UsageRecord with
counts and timings, never text.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from auxen.auth.sealing import unseal
from auxen.billing.catalog import TokenPrices
from auxen.billing.ledger import Ledger, Spend
from auxen.billing.meter import TOKENS
from auxen.config import Settings
from auxen.inference.bounds import bound_generation
from auxen.inference.shared import SHARED_TIER, cache_salt
from auxen.inference.upstream import UpstreamError, UpstreamPool, UpstreamResponse
from auxen.inference.usage import UsageRecorder
from auxen.store.db import Database
from auxen.store.ids import new_id
from auxen.store.models import Instance, InstanceState, KeyKind, utcnow
from auxen.tools.context import Caller
from auxen.tools.errors import Conflict, NotFound, PermissionDenied
from auxen.tools.permissions import Permission

# How long an instance's upstream address and unsealed key are kept (its state is not).
TARGET_TTL_S = 5.0
# A delta or completion chunk carrying text; and a chunk carrying a usage object.
_NON_EMPTY_TEXT = re.compile(rb'"(?:content|text)":\s*"(?!")')
_USAGE_OBJECT = re.compile(rb'"usage":\s*\{')


@dataclass(frozen=True)
class Target:
    instance_id: str
    workspace_id: str
    livemode: bool
    model: str
    state: InstanceState
    base_url: str | None
    api_key: str | None
    tier: str = "dedicated"
    client_id: str | None = None  # the agent (OAuth client) that provisioned it
    history: bool = False  # provisioned with conversation history
    cache_salt: str | None = None  # shared tier: the workspace's own prefix cache

    @property
    def per_token(self) -> bool:
        """Billed per token (the shared-small tier), not per hour of GPU time."""
        return self.tier == SHARED_TIER

    @property
    def headers(self) -> dict[str, str]:
        # Only the upstream key: the caller's own Authorization never goes upstream.
        return {"Authorization": f"Bearer {self.api_key}"}


@dataclass(frozen=True)
class Completion:
    """A finished, non-streamed upstream answer."""

    status: int
    content: bytes


class InferenceGateway:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        usage: UsageRecorder,
        ledger: Ledger,
        token_prices: TokenPrices,
    ) -> None:
        self.db = db
        self.settings = settings
        self.usage = usage
        self.ledger = ledger
        self.token_prices = token_prices
        self.upstream = UpstreamPool()
        self._targets: dict[str, tuple[Target, float]] = {}
        self._settling: set[asyncio.Task[int]] = set()

    def forget(self, instance_id: str) -> None:
        cached = self._targets.pop(instance_id, None)
        if cached is not None and cached[0].base_url is not None:
            self.upstream.forget_origin(cached[0].base_url)

    async def close(self) -> None:
        await self.upstream.close()

    async def _target(self, instance_id: str) -> Target | None:
        """Where the instance is served and with which key (cached: unsealing costs), and
        its state read from the database on every call: another server may have
        destroyed or stopped it a moment ago, and no cache here may outlive that."""
        now = time.monotonic()
        cached = self._targets.get(instance_id)
        if cached is not None and cached[1] > now:
            current = await self._current(instance_id)
            if current == (cached[0].state, cached[0].base_url):
                return cached[0]
            self.forget(instance_id)
        async with self.db.system() as session:
            instance = await session.get(Instance, instance_id)
        if instance is None:
            return None
        target = Target(
            instance_id=instance.id,
            workspace_id=instance.workspace_id,
            livemode=instance.livemode,
            model=instance.model,
            state=instance.state,
            tier=instance.tier,
            client_id=instance.client_id,
            history=instance.history,
            cache_salt=cache_salt(self.settings.master_key_bytes, instance.workspace_id)
            if instance.tier == SHARED_TIER
            else None,
            base_url=instance.upstream_url,
            api_key=unseal(
                self.settings.master_key_bytes,
                instance.workspace_id,
                instance.upstream_key_sealed,
            )
            if instance.upstream_key_sealed
            else None,
        )
        self._targets[instance_id] = (target, now + TARGET_TTL_S)
        return target

    async def _current(self, instance_id: str) -> tuple[InstanceState, str | None] | None:
        """The instance's state and upstream as committed now (one indexed read)."""
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(col(Instance.state), col(Instance.upstream_url)).where(
                        col(Instance.id) == instance_id
                    )
                )
            ).first()
        return None if row is None else (InstanceState(row[0]), row[1])

    async def authorize(self, caller: Caller, instance_id: str) -> Target:
        """The ready instance `caller` may send inference to, or a typed error."""
        caller.require(Permission.QUERY)
        if caller.key_kind is KeyKind.INSTANCE and caller.instance_id != instance_id:
            raise PermissionDenied(
                "this instance key belongs to another instance; use that instance's auxk_ key",
            )
        target = await self._target(instance_id)
        if (
            target is None
            or target.workspace_id != caller.workspace_id
            or target.livemode != caller.livemode
        ):
            raise NotFound(f"no instance {instance_id}", param="instance_id")
        if target.state is not InstanceState.READY or target.base_url is None:
            raise Conflict(
                f"instance {instance_id} is {target.state.value}, not ready; "
                + (
                    "wait until its state is ready"
                    if not target.state.is_terminal and target.state is not InstanceState.STOPPING
                    else "provision a new instance"
                ),
                param="instance_id",
            )
        return target

    async def reserve(
        self, caller: Caller, target: Target, path: str, body: dict[str, Any]
    ) -> str | None:
        """For a per-token instance, reserve the most this request can cost before it is
        sent (raises OverBudget), with `body` rewritten so the upstream cannot generate
        more than that (see `bounds`; InvalidArgument when a field makes the bound
        uncomputable). None for instances billed by the hour."""
        if not target.per_token:
            return None
        bound = bound_generation(
            body,
            chat=path == "chat/completions",
            default_max_tokens=self.settings.default_max_tokens,
        )
        # An agent's instance spends from that agent's budget whatever key reaches it
        # (its auxk_ keys included); otherwise the calling agent's, if any.
        agent = target.client_id or caller.client_id
        spend = Spend(target.workspace_id, target.livemode, target.instance_id, TOKENS, agent)
        cost = self.token_prices.cost(bound.prompt_tokens, bound.completion_tokens)
        return await self.ledger.reserve(spend, cost)

    def meter(
        self,
        caller: Caller,
        target: Target,
        endpoint: str,
        *,
        stream: bool,
        started: float | None = None,
        hold: str | None = None,
    ) -> Meter:
        """A meter for one call; `started` (a perf_counter reading) defaults to now;
        `hold`, the call's reservation, is settled to what it generated when it ends."""
        return Meter(
            self.usage, caller, target, endpoint, stream, started or time.perf_counter(),
            on_finish=self._settle if hold else None, hold=hold,
        )  # fmt: skip

    def _settle(self, meter: Meter) -> None:
        """Charge a finished per-token call (off the response path; a crash before this
        leaves the hold open, and the GPU meter's sweep charges what its usage row
        recorded)."""
        cost = self.token_prices.cost(meter.prompt_tokens, meter.completion_total)
        task = asyncio.get_running_loop().create_task(self.ledger.settle(meter.hold, cost))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def settled(self) -> None:
        """Wait for charges still being written (tests, shutdown)."""
        await asyncio.gather(*self._settling, return_exceptions=True)

    async def send(self, target: Target, path: str, body: dict[str, Any]) -> UpstreamResponse:
        """POST `body` to the instance's `/v1/{path}`; the caller reads or streams it."""
        if target.cache_salt is not None:
            body["cache_salt"] = target.cache_salt
        return await self.upstream.request(
            "POST",
            f"{target.base_url}/v1/{path}",
            {**target.headers, "Content-Type": "application/json"},
            json.dumps(body).encode(),
        )

    async def complete(
        self,
        caller: Caller,
        target: Target,
        path: str,
        body: dict[str, Any],
        *,
        started: float | None = None,
    ) -> Completion:
        """Send one non-streamed request upstream and meter it; raises UpstreamError
        (already metered) when the instance cannot be reached, OverBudget when a
        per-token instance's request cannot be paid for."""
        hold = await self.reserve(caller, target, path, body)
        meter = self.meter(caller, target, path, stream=False, started=started, hold=hold)
        try:
            upstream = await self.send(target, path, body)
        except UpstreamError:
            meter.finish(502, "upstream_unreachable")
            raise
        try:
            content = await upstream.read()
        except UpstreamError:
            meter.finish(502, "upstream_error")
            raise
        finally:
            upstream.close()
        if upstream.status < 400:
            meter.take_usage(usage_of(content))
        meter.finish(caller_status(upstream.status), "ok" if upstream.status < 400 else "error")
        return Completion(upstream.status, content)


class Meter:
    """Counts one call's tokens and timings and records them as a UsageRecord."""

    def __init__(
        self,
        usage: UsageRecorder,
        caller: Caller,
        target: Target,
        endpoint: str,
        stream: bool,
        started: float,
        *,
        on_finish: Callable[[Meter], None] | None = None,
        hold: str | None = None,
    ) -> None:
        self.usage = usage
        self.on_finish = on_finish
        self.hold = hold
        self.caller = caller
        self.target = target
        self.endpoint = endpoint
        self.stream = stream
        self.started = started
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.content_chunks = 0
        self.ttft_ms: float | None = None
        self.saw_usage = False
        self.done = False
        self.row_id = new_id("use")
        self.created_at = utcnow()

    def open(self) -> None:
        """The stream is flowing: checkpoint its usage until it ends (crash-safe)."""
        self.usage.open_stream(self.row_id, lambda: self.fields(200, "streaming"))

    def take_usage(self, usage: dict[str, Any] | None) -> None:
        if usage:
            self.saw_usage = True
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)

    def observe_event(self, event: bytes) -> bool:
        """Note what an SSE event carries; False if it is the usage-only chunk that
        Auxen asked for on the caller's behalf. Byte checks first: most events are
        token deltas, and parsing each one's JSON would dominate the relay's cost."""
        if _NON_EMPTY_TEXT.search(event):
            self.content_chunks += 1
            if self.ttft_ms is None:
                self.ttft_ms = (time.perf_counter() - self.started) * 1000
        if not _USAGE_OBJECT.search(event):
            return True
        try:
            payload = json.loads(event.removeprefix(b"data: "))
        except ValueError:
            return True
        usage = payload.get("usage") if isinstance(payload, dict) else None
        if not usage:
            return True
        self.take_usage(usage)
        return bool(payload.get("choices"))

    @property
    def completion_total(self) -> int:
        """Completion tokens: as counted upstream, else one per content chunk seen (a
        stream cut short never sends its usage)."""
        return self.completion_tokens if self.saw_usage else self.content_chunks

    def finish(self, status_code: int, outcome: str) -> None:
        if self.done:
            return
        self.done = True
        if self.on_finish is not None:
            self.on_finish(self)
        self.usage.record(**self.fields(status_code, outcome))

    def fields(self, status_code: int, outcome: str) -> dict[str, Any]:
        """The usage row as it stands."""
        completion = self.completion_total
        return {
            "id": self.row_id,
            "created_at": self.created_at,
            "workspace_id": self.target.workspace_id,
            "instance_id": self.target.instance_id,
            "api_key_id": self.caller.key_id,
            "endpoint": self.endpoint,
            "model": self.target.model,
            "stream": self.stream,
            "status_code": status_code,
            "outcome": outcome,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "latency_ms": (time.perf_counter() - self.started) * 1000,
            "ttft_ms": self.ttft_ms,
            "reservation_id": self.hold,
        }


def usage_of(content: bytes) -> dict[str, Any] | None:
    try:
        usage = json.loads(content).get("usage")
    except (ValueError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


def upstream_error(content: bytes) -> tuple[str | None, str | None, str | None]:
    """(message, param, code) from a vLLM/OpenAI error body, where it has them."""
    try:
        payload = json.loads(content)
    except ValueError:
        return None, None, None
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict) or "message" not in error:
        return None, None, None
    param = error.get("param")
    code = error.get("code")
    return (
        str(error["message"]),
        param.removeprefix("body.") if isinstance(param, str) else None,
        str(code) if code is not None else None,
    )


def caller_status(upstream_status: int) -> int:
    """The status the caller sees: the instance refusing our own key is a 502 (ours)."""
    return 502 if upstream_status in (401, 403) else upstream_status
