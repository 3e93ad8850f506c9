"""The instance lifecycle: pending -> provisioning -> starting -> ready -> stopping ->
destroyed, or failed with a reason.

Every transition is a conditional UPDATE (`WHERE state IN (...)`) persisted before the
side effect it announces, so a crash at any point leaves a row the reconciler can finish:
it re-attaches to live processes, resumes warm-up, fails instances whose process is gone,
finishes interrupted destroys, destroys expired instances and kills orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import httpx2
import sqlalchemy as sa
from sqlmodel import col, select

from auxen.auth.sealing import unseal
from auxen.config import Settings
from auxen.inference.providers.base import (
    LaunchSpec,
    Provider,
    ProviderError,
    ResourceStatus,
)
from auxen.store.db import Database
from auxen.store.models import ApiKey, Instance, InstanceState, KbAttachment, as_utc

log = logging.getLogger(__name__)

S = InstanceState
LIVE_STATES = (S.PENDING, S.PROVISIONING, S.STARTING, S.READY, S.STOPPING)
# Another process on the same database (`auxen serve` beside an embedded `auxen mcp`) may
# be starting a young instance right now: the reconciler neither fails nor adopts it
# until it is this old, so two processes never race over one bring-up.
LAUNCH_GRACE_S = 120.0
READINESS_POLL_S = 1.0


class InstanceManager:
    def __init__(
        self,
        db: Database,
        provider: Provider,
        settings: Settings,
        on_change: Callable[[str], None] = lambda _id: None,
    ) -> None:
        self.db = db
        self.provider = provider
        self.settings = settings
        self.on_change = on_change
        self._bring_ups: dict[str, asyncio.Task[None]] = {}
        self._destroys: dict[str, asyncio.Task[Instance]] = {}
        self._http = httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, connect=2.0))
        self._reconciler: asyncio.Task[None] | None = None

    # -- transitions ---------------------------------------------------------------

    async def _transition(
        self, instance_id: str, allowed: Iterable[InstanceState], to: InstanceState, **fields: Any
    ) -> bool:
        """Persist `to` only if the row is still in one of `allowed`; False if it moved on."""
        async with self.db.system() as session:
            result = await session.exec(
                sa.update(Instance)
                .where(col(Instance.id) == instance_id)
                .where(col(Instance.state).in_([s.value for s in allowed]))
                .values(state=to.value, **fields)
            )
            await session.commit()
        self.on_change(instance_id)
        return bool(result.rowcount)

    async def _load(self, instance_id: str) -> Instance | None:
        async with self.db.system() as session:
            return await session.get(Instance, instance_id)

    # -- bring-up ------------------------------------------------------------------

    async def launch(self, instance_id: str) -> None:
        """Move a new (pending) instance to provisioning and start bringing it up."""
        if await self._transition(instance_id, [S.PENDING], S.PROVISIONING):
            self.start_bring_up(instance_id)

    def start_bring_up(self, instance_id: str) -> None:
        """Start (or resume) creating and warming up an instance in the background."""
        if instance_id in self._bring_ups:
            return
        task = asyncio.create_task(self._bring_up(instance_id), name=f"bring-up {instance_id}")
        self._bring_ups[instance_id] = task
        task.add_done_callback(lambda _t: self._bring_ups.pop(instance_id, None))

    async def wait_settled(self, instance_id: str) -> None:
        """Wait until a bring-up running in this process has finished (tests, CLI)."""
        task = self._bring_ups.get(instance_id)
        if task is not None:
            await asyncio.wait([task])

    async def _bring_up(self, instance_id: str) -> None:
        try:
            instance = await self._load(instance_id)
            if instance is None or instance.state not in (S.PROVISIONING, S.STARTING):
                return
            api_key = self._upstream_key(instance)
            if instance.state is S.PROVISIONING:
                try:
                    resource = await self.provider.create(
                        LaunchSpec(
                            instance_id=instance.id,
                            model=instance.model,
                            gpu_type=instance.gpu_type,
                            served_model_name=instance.model,
                            upstream_api_key=api_key,
                        )
                    )
                except ProviderError as exc:
                    await self._fail(instance_id, str(exc))
                    return
                moved = await self._transition(
                    instance_id,
                    [S.PROVISIONING],
                    S.STARTING,
                    provider_id=resource.provider_id,
                    upstream_url=resource.endpoint,
                )
                if not moved:  # destroyed meanwhile: do not leave the process behind
                    await self.provider.terminate(resource.provider_id, instance_id)
                    return
                instance = await self._load(instance_id)
                assert instance is not None
            await self._await_ready(instance, api_key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must still leave no process running untracked
            log.exception("bring-up of %s crashed", instance_id)
            await self._fail(instance_id, f"internal error while starting: {type(exc).__name__}")

    async def _await_ready(self, instance: Instance, api_key: str) -> None:
        """Two stages: the process is alive and /health answers, then a real one-token
        completion succeeds (vLLM reports healthy before a broken kernel fails)."""
        assert instance.provider_id is not None and instance.upstream_url is not None
        deadline = time.monotonic() + self.settings.vllm_ready_timeout_s
        headers = {"Authorization": f"Bearer {api_key}"}
        probe = {"model": instance.model, "prompt": "ready", "max_tokens": 1}
        while True:
            status = await self.provider.status(instance.provider_id)
            if status is not ResourceStatus.RUNNING:
                await self._fail(instance.id, f"the vLLM server {status.value} while starting")
                return
            with contextlib.suppress(httpx2.HTTPError):
                health = await self._http.get(f"{instance.upstream_url}/health", timeout=2.0)
                if health.status_code == 200:
                    reply = await self._http.post(
                        f"{instance.upstream_url}/v1/completions", json=probe, headers=headers
                    )
                    if reply.status_code == 200 and reply.json().get("choices"):
                        await self._transition(
                            instance.id, [S.STARTING], S.READY, ready_at=datetime.now(UTC)
                        )
                        return
                    if reply.status_code != 503:
                        await self._fail(
                            instance.id,
                            f"the test completion failed with HTTP {reply.status_code}",
                        )
                        return
            if time.monotonic() > deadline:
                await self._fail(
                    instance.id,
                    f"not ready after {self.settings.vllm_ready_timeout_s:.0f}s "
                    "(AUXEN_VLLM_READY_TIMEOUT_S)",
                )
                return
            await asyncio.sleep(READINESS_POLL_S)

    def _upstream_key(self, instance: Instance) -> str:
        assert instance.upstream_key_sealed is not None
        return unseal(
            self.settings.master_key_bytes, instance.workspace_id, instance.upstream_key_sealed
        )

    async def _fail(self, instance_id: str, reason: str) -> None:
        """Record the failure (with the end of the server's log), then clean up."""
        instance = await self._load(instance_id)
        if instance is None or instance.state.is_terminal or instance.state is S.STOPPING:
            return
        tail = await self.provider.logs_tail(instance.provider_id or "", instance_id)
        detail = f"{reason}\n--- last lines of the vLLM log ---\n{tail}" if tail else reason
        moved = await self._transition(
            instance_id,
            [S.PENDING, S.PROVISIONING, S.STARTING, S.READY],
            S.FAILED,
            last_error=detail,
            stopped_at=datetime.now(UTC),
        )
        if moved:
            log.warning("instance %s failed: %s", instance_id, reason)
            await self.provider.terminate(instance.provider_id or "", instance_id)
            await self._delete_keys(instance_id)

    # -- destroy -------------------------------------------------------------------

    async def destroy(self, instance_id: str, reason: str = "requested") -> Instance:
        """Stop the instance and delete everything it held. Idempotent; a destroy in
        progress is joined, and it finishes even if the caller goes away."""
        task = self._destroys.get(instance_id)
        if task is None:
            task = asyncio.create_task(self._destroy(instance_id, reason))
            self._destroys[instance_id] = task
            task.add_done_callback(lambda _t: self._destroys.pop(instance_id, None))
        return await asyncio.shield(task)

    async def _destroy(self, instance_id: str, reason: str) -> Instance:
        instance = await self._load(instance_id)
        assert instance is not None
        if instance.state is S.DESTROYED:
            return instance
        await self._transition(
            instance_id, [*LIVE_STATES, S.FAILED], S.STOPPING, destroy_reason=reason
        )
        bring_up = self._bring_ups.get(instance_id)
        if bring_up is not None:
            bring_up.cancel()
            await asyncio.wait([bring_up])
        instance = await self._load(instance_id)
        assert instance is not None
        await self.provider.terminate(instance.provider_id or "", instance_id)
        await self._delete_keys(instance_id)
        now = datetime.now(UTC)
        await self._transition(
            instance_id,
            [S.STOPPING],
            S.DESTROYED,
            destroyed_at=now,
            stopped_at=instance.stopped_at or now,
            upstream_url=None,
            upstream_key_sealed=None,
        )
        destroyed = await self._load(instance_id)
        assert destroyed is not None
        return destroyed

    async def _delete_keys(self, instance_id: str) -> None:
        """Delete what lets anyone reach the instance: its keys, and the knowledge-base
        attachments it retrieved through (the knowledge bases themselves stay)."""
        async with self.db.system() as session:
            await session.exec(sa.delete(ApiKey).where(col(ApiKey.instance_id) == instance_id))
            await session.exec(
                sa.delete(KbAttachment).where(col(KbAttachment.instance_id) == instance_id)
            )
            await session.commit()
        self.on_change(instance_id)

    # -- reconciler ----------------------------------------------------------------

    async def reconcile(self) -> None:
        """Make the database and the provider agree. Safe to run at any time."""
        owned = {r.instance_id: r for r in await self.provider.list_owned()}
        async with self.db.system() as session:
            rows = (
                await session.exec(
                    select(Instance)
                    .where(col(Instance.provider) == self.provider.name)
                    .where(col(Instance.state).in_([s.value for s in LIVE_STATES]))
                )
            ).all()
        now = datetime.now(UTC)
        for instance in rows:
            if instance.id in self._bring_ups or instance.id in self._destroys:
                continue
            resource = owned.get(instance.id)
            young = (now - as_utc(instance.created_at)).total_seconds() < LAUNCH_GRACE_S
            if instance.state is S.STOPPING:
                await self.destroy(instance.id, instance.destroy_reason or "requested")
            elif as_utc(instance.expires_at) <= now:
                await self.destroy(instance.id, "ttl_expired")
            elif instance.state is S.READY and _idle_for(instance, now) > (
                instance.idle_timeout_s or float("inf")
            ):
                await self.destroy(instance.id, "idle_timeout")
            elif young and instance.state is not S.READY:
                continue  # another process may be starting it right now; adopt it later
            elif resource is None:
                await self._fail(
                    instance.id,
                    "the vLLM process is gone (it crashed or was "
                    "lost while the control plane was down)",
                )
            elif instance.state is not S.READY:
                # Interrupted warm-up: adopt the process and finish the readiness checks.
                await self._transition(
                    instance.id,
                    [S.PENDING, S.PROVISIONING, S.STARTING],
                    S.STARTING,
                    provider_id=resource.provider_id,
                    upstream_url=resource.endpoint,
                )
                self.start_bring_up(instance.id)
        live = {i.id for i in rows}
        for instance_id, resource in owned.items():
            if instance_id not in live:
                log.warning("terminating orphaned resource of %s", instance_id)
                await self.provider.terminate(resource.provider_id, instance_id)

    def start_reconciler(self) -> None:
        self._reconciler = asyncio.create_task(self._reconcile_forever(), name="reconciler")

    async def _reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile pass failed; retrying")
            await asyncio.sleep(self.settings.reconcile_interval_s)

    async def close(self) -> None:
        """Stop background work. Instance processes keep running: the next start
        re-attaches to them."""
        tasks = [t for t in (self._reconciler, *self._bring_ups.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._destroys.values(), return_exceptions=True)
        await self._http.aclose()


def _idle_for(instance: Instance, now: datetime) -> float:
    """Seconds since the instance's last query (or since it became ready)."""
    last = instance.last_query_at or instance.ready_at or instance.created_at
    return (now - as_utc(last)).total_seconds()
