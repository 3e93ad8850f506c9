"""The instance lifecycle: pending -> provisioning -> starting -> ready -> stopping ->
destroyed, or failed with a reason.

Every transition is a conditional UPDATE (`WHERE state IN (...)`) persisted before the
side effect it announces, so a crash at any point leaves a row the reconciler can finish:
it re-attaches to live resources, resumes warm-up, fails instances whose resource is gone,
finishes interrupted destroys, destroys expired instances, terminates orphans and
duplicates, and closes the usage rows of streams whose process died.

Several control-plane processes may share one database. A bring-up is owned by the
process holding the instance's lease (`lease_owner`, `lease_expires_at`), renewed while it
works and taken by a conditional UPDATE, so two processes never bring up one instance.
On PostgreSQL one process at a time runs a reconcile pass (a transaction advisory lock
that the database drops when its holder stops talking, see `_leadership`), which also
keeps provider list calls (rate-limited) to one per interval; SQLite deployments are a
single process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import sqlalchemy as sa
from sqlmodel import col, select

from auxen.auth.byok import WorkspaceCredentials, workspace_credentials
from auxen.auth.sealing import unseal
from auxen.billing.catalog import PriceBook, load_prices
from auxen.config import Settings
from auxen.faults import crash_point
from auxen.inference.providers.base import (
    PROVIDER_ACCOUNT,
    LaunchSpec,
    OwnedResource,
    Provider,
    ProviderError,
    ResourceStatus,
)
from auxen.inference.shared import SHARED_TIER, SharedTier
from auxen.notify import Event, EventType, notify
from auxen.periodic import Periodic
from auxen.store.db import Database
from auxen.store.models import (
    ApiKey,
    Conversation,
    ConversationTurn,
    Instance,
    InstanceState,
    KbAttachment,
    ProviderCredential,
    Reservation,
    UsageRecord,
    as_utc,
)

log = logging.getLogger(__name__)

S = InstanceState
LIVE_STATES = (S.PENDING, S.PROVISIONING, S.STARTING, S.READY, S.STOPPING)
READINESS_POLL_S = 1.0
# Destroys the workspace did not ask for and hears about (budget stops raise an alert).
TOLD_DESTROY_REASONS = ("ttl_expired", "idle_timeout")
# Any key fits in a bigint; one lock id for "the reconciler" across the deployment.
RECONCILE_LOCK_ID = 0x4155_5845_4E52_4543  # "AUXENREC"


@dataclass
class ReconcileReport:
    """What one reconcile pass did (the `auxen reconcile` command prints it)."""

    leader: bool = True
    orphans_terminated: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    streams_interrupted: int = 0


class InstanceManager:
    def __init__(
        self,
        db: Database,
        provider: Provider,
        settings: Settings,
        on_change: Callable[[str], None] = lambda _id: None,
        prices: PriceBook | None = None,
    ) -> None:
        self.db = db
        self.provider = provider
        self.settings = settings
        self.on_change = on_change
        self.prices = prices or load_prices(None)
        self._bring_ups: dict[str, asyncio.Task[None]] = {}
        self._destroys: dict[str, asyncio.Task[Instance]] = {}
        self._kept: dict[str, datetime] = {}  # the last paid-until sent to each watchdog
        self._http = httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, connect=5.0))
        self._reconciler = Periodic(
            "reconciler", self._background_pass, settings.reconcile_interval_s
        )
        # Chores run after each reconcile pass (sweeping old audit events, ...).
        self.housekeeping: list[Callable[[], Awaitable[object]]] = []
        self.owner = f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(4)}"
        self.shared = SharedTier(self)
        self.stream_stale_s = max(
            settings.usage_stream_stale_s, 10 * settings.usage_flush_interval_s
        )

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

    # -- leases --------------------------------------------------------------------

    async def _claim(self, instance_id: str) -> bool:
        """Take (or renew) this process's lease on the instance; False if another live
        process holds it."""
        now = datetime.now(UTC)
        async with self.db.system() as session:
            result = await session.exec(
                sa.update(Instance)
                .where(col(Instance.id) == instance_id)
                .where(
                    sa.or_(
                        col(Instance.lease_owner).is_(None),
                        col(Instance.lease_owner) == self.owner,
                        col(Instance.lease_expires_at) < now,
                    )
                )
                .values(
                    lease_owner=self.owner,
                    lease_expires_at=now + timedelta(seconds=self.settings.instance_lease_s),
                )
            )
            await session.commit()
        return bool(result.rowcount)

    async def _release(self, instance_id: str) -> None:
        async with self.db.system() as session:
            await session.exec(
                sa.update(Instance)
                .where(col(Instance.id) == instance_id)
                .where(col(Instance.lease_owner) == self.owner)
                .values(lease_owner=None, lease_expires_at=None)
            )
            await session.commit()

    async def _set_detail(self, instance_id: str, detail: str) -> None:
        async with self.db.system() as session:
            await session.exec(
                sa.update(Instance)
                .where(col(Instance.id) == instance_id)
                .values(status_detail=detail[:300])
            )
            await session.commit()

    # -- bring-up ------------------------------------------------------------------

    async def launch(self, instance_id: str) -> None:
        """Move a new (pending) instance to provisioning and start bringing it up."""
        # The lease is taken with the transition, so no other process's reconciler can
        # adopt the bring-up before this one starts it.
        lease = datetime.now(UTC) + timedelta(seconds=self.settings.instance_lease_s)
        if await self._transition(
            instance_id,
            [S.PENDING],
            S.PROVISIONING,
            lease_owner=self.owner,
            lease_expires_at=lease,
        ):
            self.start_bring_up(instance_id)

    def start_bring_up(self, instance_id: str) -> None:
        """Start (or resume) creating and warming up an instance in the background."""
        if instance_id in self._bring_ups:
            return
        task = asyncio.create_task(
            self._owned_bring_up(instance_id), name=f"bring-up {instance_id}"
        )
        self._bring_ups[instance_id] = task
        task.add_done_callback(lambda _t: self._bring_ups.pop(instance_id, None))

    async def _owned_bring_up(self, instance_id: str) -> None:
        if not await self._claim(instance_id):
            return  # another process is bringing it up
        try:
            await self._bring_up(instance_id)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._release(instance_id))

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
            if instance.tier == SHARED_TIER:
                await self.shared.attach(instance)  # no resource of its own
                return
            creds = await self._enter_account(instance.workspace_id, launch=True)
            api_key = self._upstream_key(instance)
            crash_point("bring_up.provisioning")
            if instance.state is S.PROVISIONING:
                fallbacks = tuple(filter(None, (instance.gpu_fallbacks or "").split(",")))
                try:
                    resource = await self.provider.create(
                        LaunchSpec(
                            instance_id=instance.id,
                            model=instance.model,
                            gpu_type=instance.gpu_type,
                            served_model_name=instance.model,
                            upstream_api_key=api_key,
                            gpu_fallbacks=fallbacks,
                            hf_token=creds.hf_token,
                            paid_until=await self._paid_until(instance),
                        )
                    )
                except ProviderError as exc:
                    await self._fail(instance_id, str(exc))
                    return
                got: dict[str, Any] = {}
                gpus = self.prices.gpu_types
                if resource.gpu_type and resource.gpu_type in gpus:
                    got = {
                        "gpu_type": resource.gpu_type,
                        "hourly_price_micros": gpus[resource.gpu_type].hourly_price_micros,
                    }
                moved = await self._transition(
                    instance_id,
                    [S.PROVISIONING],
                    S.STARTING,
                    provider_id=resource.provider_id,
                    upstream_url=resource.endpoint,
                    **got,
                )
                if not moved:  # destroyed meanwhile: do not leave the process behind
                    await self.provider.terminate(resource.provider_id, instance_id)
                    return
                crash_point("bring_up.starting")
                instance = await self._load(instance_id)
                assert instance is not None
            await self._await_ready(instance, api_key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must still leave no process running untracked
            log.exception("bring-up of %s crashed", instance_id)
            await self._fail(instance_id, f"internal error while starting: {type(exc).__name__}")

    async def _await_ready(self, instance: Instance, api_key: str) -> None:
        """Two stages: the resource is running and `/v1/models` answers with the upstream
        key, then a real one-token completion succeeds (vLLM reports healthy before a
        broken kernel fails). Progress goes to `status_detail`; the lease is renewed."""
        assert instance.provider_id is not None and instance.upstream_url is not None
        timeout = self.provider.ready_timeout_s
        started = time.monotonic()
        deadline = started + timeout
        headers = {"Authorization": f"Bearer {api_key}"}
        probe = {"model": instance.model, "prompt": "ready", "max_tokens": 1}
        last_detail, last_renew = "", started
        while True:
            try:
                status = await self.provider.status(instance.provider_id)
            except ProviderError as exc:  # the provider's API is having a moment: keep waiting
                log.warning("status of %s: %s", instance.id, exc)
                status = ResourceStatus.RUNNING
            if status is not ResourceStatus.RUNNING:
                await self._fail(instance.id, f"the vLLM server {status.value} while starting")
                return
            stage = await self.provider.describe(instance.provider_id)
            with contextlib.suppress(httpx2.HTTPError, ValueError):
                models = await self._http.get(
                    f"{instance.upstream_url}/v1/models", headers=headers, timeout=10.0
                )
                if models.status_code == 200:
                    stage = "vLLM answers; running a test completion"
                    reply = await self._http.post(
                        f"{instance.upstream_url}/v1/completions", json=probe, headers=headers
                    )
                    if reply.status_code == 200 and reply.json().get("choices"):
                        await self._transition(
                            instance.id,
                            [S.STARTING],
                            S.READY,
                            ready_at=datetime.now(UTC),
                            status_detail=None,
                        )
                        return
                    if reply.status_code not in (502, 503, 504):
                        await self._fail(
                            instance.id,
                            f"the test completion failed with HTTP {reply.status_code}",
                        )
                        return
                elif models.status_code in (401, 403):
                    await self._fail(instance.id, "the vLLM server refused the instance's key")
                    return
            now = time.monotonic()
            if now > deadline:
                await self._fail(
                    instance.id,
                    f"not ready after {timeout:.0f}s ({self.provider.name} ready timeout)",
                )
                return
            detail = f"{stage}; {now - started:.0f}s of up to {timeout:.0f}s"
            if stage != last_detail.split(";")[0] or int(now - started) % 10 == 0:
                await self._set_detail(instance.id, detail)
                last_detail = detail
            if now - last_renew > self.settings.instance_lease_s / 3:
                await self._claim(instance.id)
                last_renew = now
            await asyncio.sleep(READINESS_POLL_S)

    async def _paid_until(self, instance: Instance) -> datetime | None:
        """Where the instance's own watchdog stops it: the end of its last reserved GPU
        window plus AUXEN_WATCHDOG_SLACK_S (None: not paid by the hour)."""
        if instance.hourly_price_micros <= 0:
            return None
        async with self.db.system() as session:
            end = (
                await session.exec(
                    select(sa.func.max(Reservation.window_end))
                    .where(col(Reservation.instance_id) == instance.id)
                    .where(col(Reservation.window_end).is_not(None))
                )
            ).one()
        return self._stop_at(as_utc(end)) if end is not None else None

    def _stop_at(self, paid_until: datetime) -> datetime:
        # A little past the paid end, so a control plane that extends a moment late
        # (a busy event loop) never sees a paid instance stop under it.
        return paid_until + timedelta(seconds=self.settings.watchdog_slack_s)

    async def keep_until(self, instance: Instance, paid_until: datetime) -> None:
        """Move the watchdog of the instance's resource to the end of its paid window
        (the meter calls this each pass; unchanged deadlines are not sent again)."""
        if instance.tier == SHARED_TIER or self._kept.get(instance.id) == paid_until:
            return
        key = None
        if self.provider.accounts_per_workspace:
            creds = await workspace_credentials(
                self.db, self.settings.master_key_bytes, instance.workspace_id
            )
            key = creds.runpod_api_key
        try:
            with _acting_in(key):
                await self.provider.keep_until(
                    instance.provider_id or "", instance.id, self._stop_at(paid_until)
                )
        except ProviderError as exc:  # tried again next pass
            log.warning("could not extend the watchdog of %s: %s", instance.id, exc)
            return
        if instance.provider_id:  # before its resource is recorded, sent every pass
            self._kept[instance.id] = paid_until

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
        tail = ""
        with contextlib.suppress(ProviderError):
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
            await self._delete_keys(instance_id)
            await notify(
                self.db,
                instance.workspace_id,
                Event(
                    EventType.INSTANCE_FAILED,
                    {"instance_id": instance_id, "model": instance.model, "reason": reason[:300]},
                    livemode=instance.livemode,
                ),
            )
            if instance.tier == SHARED_TIER:
                return  # its host serves others
            try:
                await self.provider.terminate(instance.provider_id or "", instance_id)
            except ProviderError as exc:  # the orphan sweep terminates it later
                log.warning("could not terminate the resource of %s yet: %s", instance_id, exc)

    # -- destroy -------------------------------------------------------------------

    async def begin_destroy(self, instance_id: str, reason: str = "requested") -> bool:
        """Mark a live instance `stopping`; True for the one call, of all calls in all
        processes, that made the move (it alone audits the destroy)."""
        return await self._transition(
            instance_id,
            [s for s in LIVE_STATES if s is not S.STOPPING],
            S.STOPPING,
            destroy_reason=reason,
        )

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
        await self._enter_account(instance.workspace_id)
        begun = await self.begin_destroy(instance_id, reason)
        await self._transition(instance_id, [S.FAILED], S.STOPPING, destroy_reason=reason)
        if begun and reason != "requested":
            # Auxen's own decision (TTL, idleness, a cap): the caller's are audited by
            # the operation that asked.
            from auxen.tools.audit import Actor, record, safely

            await safely(
                record(
                    self.db, instance.workspace_id, Actor.system(), "instance.destroy",
                    target_type="instance", target_id=instance_id, detail={"reason": reason},
                )
            )  # fmt: skip
        bring_up = self._bring_ups.get(instance_id)
        if bring_up is not None:
            bring_up.cancel()
            await asyncio.wait([bring_up])
        instance = await self._load(instance_id)
        assert instance is not None
        await self._delete_keys(instance_id)
        self._kept.pop(instance_id, None)
        crash_point("destroy.stopping")
        try:
            if instance.tier != SHARED_TIER:  # a shared host keeps serving the others
                await self.provider.terminate(instance.provider_id or "", instance_id)
        except ProviderError as exc:
            # Stays `stopping` (no longer billable to the caller, keys gone); the
            # reconciler finishes the destroy once the provider answers.
            log.warning("destroy of %s: %s; the reconciler will retry", instance_id, exc)
            await self._set_detail(instance_id, f"terminating: {exc}"[:300])
            stuck = await self._load(instance_id)
            assert stuck is not None
            return stuck
        now = datetime.now(UTC)
        finished = await self._transition(
            instance_id,
            [S.STOPPING],
            S.DESTROYED,
            destroyed_at=now,
            stopped_at=instance.stopped_at or now,
            upstream_url=None,
            upstream_key_sealed=None,
            status_detail=None,
            lease_owner=None,
            lease_expires_at=None,
        )
        destroyed = await self._load(instance_id)
        assert destroyed is not None
        if finished and destroyed.destroy_reason in TOLD_DESTROY_REASONS:
            await notify(
                self.db,
                destroyed.workspace_id,
                Event(
                    EventType.INSTANCE_DESTROYED,
                    {
                        "instance_id": instance_id,
                        "model": destroyed.model,
                        "reason": destroyed.destroy_reason,
                    },
                    livemode=destroyed.livemode,
                ),
            )
        return destroyed

    async def _delete_keys(self, instance_id: str) -> None:
        """Delete what lets anyone reach the instance: its keys, the knowledge-base
        attachments it retrieved through (the knowledge bases themselves stay), and every
        conversation it kept (history)."""
        conversations = select(Conversation.id).where(col(Conversation.instance_id) == instance_id)
        async with self.db.system() as session:
            await session.exec(sa.delete(ApiKey).where(col(ApiKey.instance_id) == instance_id))
            await session.exec(
                sa.delete(KbAttachment).where(col(KbAttachment.instance_id) == instance_id)
            )
            turns = await session.exec(
                sa.delete(ConversationTurn).where(
                    col(ConversationTurn.conversation_id).in_(conversations)
                )
            )
            await session.exec(
                sa.delete(Conversation).where(col(Conversation.instance_id) == instance_id)
            )
            await session.commit()
        if turns.rowcount:
            await self.db.scrub()
        self.on_change(instance_id)

    # -- reconciler ----------------------------------------------------------------

    async def reconcile(self) -> ReconcileReport:
        """Make the database and the provider agree. Safe to run at any time, from any
        number of processes: on PostgreSQL only one of them runs a pass at a time, and a
        pass ends early when it runs past `reconcile_pass_timeout_s` or loses leadership."""
        async with self._leadership() as lost:
            if lost is None:
                return ReconcileReport(leader=False)
            work = asyncio.create_task(self._reconcile_pass(), name="reconcile pass")
            await asyncio.wait(
                [work, lost],
                timeout=self.settings.reconcile_pass_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if work.done():
                return work.result()
            # Destroys and bring-ups it started are tasks of their own and carry on.
            work.cancel()
            await asyncio.wait([work])
            log.warning(
                "reconcile pass stopped: %s",
                "leadership lost" if lost.done() else "it ran past reconcile_pass_timeout_s",
            )
            return ReconcileReport(leader=False)

    @contextlib.asynccontextmanager
    async def _leadership(self) -> AsyncIterator[asyncio.Task[Any] | None]:
        """Lead one pass: yields None when another process leads, else a task that ends
        only if leadership is lost. On PostgreSQL the lead is a transaction-scoped
        advisory lock on a connection that must keep talking: the server ends a
        transaction left idle for `reconcile_leader_timeout_s` (and the lock with it),
        so a frozen or partitioned leader gives way to the others within that time."""
        if self.db.is_sqlite:
            forever = asyncio.create_task(asyncio.Event().wait())
            try:
                yield forever
            finally:
                forever.cancel()
            return
        timeout_ms = int(self.settings.reconcile_leader_timeout_s * 1000)
        params = {
            "t": f"{timeout_ms}ms",
            "name": f"auxen reconciler {self.owner}"[:63],
            "k": RECONCILE_LOCK_ID,
        }
        async with self.db.engine.connect() as conn:
            got = (
                await conn.execute(
                    sa.text(
                        "SELECT set_config('idle_in_transaction_session_timeout', :t, true), "
                        "set_config('application_name', :name, true), "
                        "pg_try_advisory_xact_lock(:k)"
                    ),
                    params,
                )
            ).one()[2]
            if not got:
                await conn.rollback()
                yield None
                return
            heartbeat = asyncio.create_task(self._keep_leading(conn, timeout_ms / 3000))
            try:
                yield heartbeat
            finally:
                heartbeat.cancel()
                await asyncio.wait([heartbeat])
                with contextlib.suppress(Exception):  # a lost connection released it already
                    await conn.rollback()

    @staticmethod
    async def _keep_leading(conn: Any, every_s: float) -> None:
        """Talk on the leader's connection so its transaction is never idle for long; a
        failure means the server ended it (the lock is gone), and this task ends."""
        try:
            while True:
                await asyncio.sleep(every_s)
                await conn.execute(sa.text("SELECT 1"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("reconcile leadership lost: %s", type(exc).__name__)

    async def _reconcile_pass(self) -> ReconcileReport:
        report = ReconcileReport()
        report.streams_interrupted = await self._close_dead_streams()
        keys = await self._account_keys()
        owned: dict[str, list[OwnedResource]] = {}
        accounts: dict[str, str | None] = {}  # provider id -> the account key it lives in
        for key in (None, *keys.values()):
            with _acting_in(key):
                for resource in await self.provider.list_owned():
                    if not resource.running:  # workers that outlived their server
                        log.warning(
                            "ending stray %s of %s", resource.provider_id, resource.instance_id
                        )
                        await self.provider.terminate(resource.provider_id, resource.instance_id)
                        report.orphans_terminated.append(resource.provider_id)
                        continue
                    owned.setdefault(resource.instance_id, []).append(resource)
                    accounts[resource.provider_id] = key
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
            with _acting_in(keys.get(instance.workspace_id)):
                await self._reconcile_instance(instance, owned.get(instance.id, []), now, report)
        report.destroyed.extend(await self.shared.stop_extra_hosts())
        live = {i.id for i in rows}
        for instance_id, resources in owned.items():
            if instance_id not in live:
                for resource in resources:
                    log.warning(
                        "terminating orphaned resource %s of %s", resource.provider_id, instance_id
                    )
                    with _acting_in(accounts[resource.provider_id]):
                        await self.provider.terminate(resource.provider_id, instance_id)
                    report.orphans_terminated.append(resource.provider_id)
        return report

    async def _reconcile_instance(
        self,
        instance: Instance,
        resources: list[OwnedResource],
        now: datetime,
        report: ReconcileReport,
    ) -> None:
        leased = (
            instance.lease_owner is not None
            and instance.lease_owner != self.owner
            and instance.lease_expires_at is not None
            and as_utc(instance.lease_expires_at) > now
        )
        if instance.state is S.STOPPING:
            await self.destroy(instance.id, instance.destroy_reason or "requested")
            report.destroyed.append(instance.id)
        elif as_utc(instance.expires_at) <= now:
            await self.destroy(instance.id, "ttl_expired")
            report.destroyed.append(instance.id)
        elif instance.state is S.READY and _idle_for(instance, now) > (
            instance.idle_timeout_s or float("inf")
        ):
            await self.destroy(instance.id, "idle_timeout")
            report.destroyed.append(instance.id)
        elif leased:
            return  # another live process is bringing it up
        elif instance.tier == SHARED_TIER:
            if not await self.shared.check(instance):
                await self._fail(instance.id, "its shared server is gone")
                report.failed.append(instance.id)
            elif instance.state is not S.READY and await self._claim(instance.id):
                report.resumed.append(instance.id)
                self.start_bring_up(instance.id)  # an interrupted wait for its host
        elif instance.state is S.READY and not resources:
            await self._fail(
                instance.id,
                "its resource is gone (it crashed, or was lost or terminated outside "
                "Auxen while the control plane was down)",
            )
            report.failed.append(instance.id)
        elif instance.state is S.READY:
            await self._terminate_extra(instance, resources, report)
        else:
            # Interrupted bring-up: adopt the resource it made and finish warm-up;
            # with none, provisioning asks again (the provider finds a resource an
            # unanswered create made), a later state has lost its resource.
            if not await self._claim(instance.id):
                return  # another process took it over a moment ago
            if resources:
                keep = next(
                    (r for r in resources if r.provider_id == instance.provider_id),
                    resources[0],
                )
                await self._transition(
                    instance.id,
                    [S.PENDING, S.PROVISIONING, S.STARTING],
                    S.STARTING,
                    provider_id=keep.provider_id,
                    upstream_url=keep.endpoint,
                )
                instance.provider_id = keep.provider_id
                await self._terminate_extra(instance, resources, report)
            elif instance.state is S.STARTING:
                await self._fail(
                    instance.id, "its resource is gone (lost while the control plane was down)"
                )
                report.failed.append(instance.id)
                return
            elif instance.state is S.PENDING:
                await self._transition(instance.id, [S.PENDING], S.PROVISIONING)
            report.resumed.append(instance.id)
            self.start_bring_up(instance.id)

    # -- provider accounts (BYOK) --------------------------------------------------

    async def _account_keys(self) -> dict[str, str]:
        """Each workspace's own provider key (BYOK), for providers whose calls can act in
        a workspace's account; none for the others."""
        if not self.provider.accounts_per_workspace:
            return {}
        master = self.settings.master_key_bytes
        async with self.db.system() as session:
            stored = (
                await session.exec(
                    select(ProviderCredential).where(
                        col(ProviderCredential.provider) == self.provider.name
                    )
                )
            ).all()
        return {c.workspace_id: unseal(master, c.workspace_id, c.sealed) for c in stored}

    async def _enter_account(
        self, workspace_id: str, *, launch: bool = False
    ) -> WorkspaceCredentials:
        """Make the current task's provider calls act in the workspace's own provider
        account when it stores a key (BYOK). With `launch`, also return its credentials
        for the launch (its Hugging Face token); the database is read only when needed."""
        creds = WorkspaceCredentials()
        if launch or self.provider.accounts_per_workspace:
            creds = await workspace_credentials(
                self.db, self.settings.master_key_bytes, workspace_id
            )
        PROVIDER_ACCOUNT.set(creds.runpod_api_key if self.provider.accounts_per_workspace else None)
        return creds

    async def _terminate_extra(
        self, instance: Instance, resources: list[OwnedResource], report: ReconcileReport
    ) -> None:
        """A second resource for one instance (a create whose answer was lost) goes."""
        for resource in resources:
            if instance.provider_id and resource.provider_id != instance.provider_id:
                log.warning("terminating duplicate %s of %s", resource.provider_id, instance.id)
                await self.provider.terminate(resource.provider_id, instance.id)
                report.orphans_terminated.append(resource.provider_id)

    async def _close_dead_streams(self) -> int:
        """Streams whose usage row stopped being checkpointed lost their process (a
        crash mid-stream): they keep the counts of their last checkpoint."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.stream_stale_s)
        async with self.db.system() as session:
            result = await session.exec(
                sa.update(UsageRecord)
                .where(col(UsageRecord.outcome) == "streaming")
                .where(col(UsageRecord.updated_at) < cutoff)
                .values(outcome="interrupted")
            )
            await session.commit()
        return int(result.rowcount or 0)

    def start_reconciler(self) -> None:
        self._reconciler.start()

    async def _background_pass(self) -> None:
        """One pass of the background reconciler, then the housekeeping chores."""
        try:
            await self.reconcile()
        except Exception:
            log.exception("reconcile pass failed; retrying")
        for chore in self.housekeeping:
            try:
                await chore()
            except Exception:
                log.exception("housekeeping failed; retrying next pass")

    async def close(self) -> None:
        """Stop background work. Instance processes keep running: the next start
        re-attaches to them."""
        await self._reconciler.stop()
        tasks = list(self._bring_ups.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._destroys.values(), return_exceptions=True)
        await self._http.aclose()
        await self.provider.close()

    async def settle(self) -> None:
        """Wait for every bring-up and destroy this process started (one-shot CLI runs)."""
        while self._bring_ups or self._destroys:
            await asyncio.gather(
                *self._bring_ups.values(), *self._destroys.values(), return_exceptions=True
            )


@contextlib.contextmanager
def _acting_in(account_key: str | None) -> Iterator[None]:
    """Provider calls inside act in the account of `account_key` (None: the deployment's)."""
    token = PROVIDER_ACCOUNT.set(account_key)
    try:
        yield
    finally:
        PROVIDER_ACCOUNT.reset(token)


def _idle_for(instance: Instance, now: datetime) -> float:
    """Seconds since the instance's last query (or since it became ready)."""
    last = instance.last_query_at or instance.ready_at or instance.created_at
    return (now - as_utc(last)).total_seconds()
