"""The Shared-Small tier: logical instances served by one shared vLLM server per model.

A shared server is an ordinary instance (tier `shared-host`) in a workspace of its own
that no key can reach, so it is started, warmed up, reconciled, swept for orphans and
destroyed by the same lifecycle as any instance. A `shared-small` instance belongs to a
customer's workspace like any other (its own `auxk_` keys, knowledge-base attachments,
usage, caps, TTL and idle timeout) but has no resource of its own: it becomes ready when
its model's host is, with the host's address and the host's key sealed again under the
customer workspace's key. The key never leaves the control plane; requests of different
workspaces share the server but never a retrieval context (that is per instance) or a
conversation (vLLM keeps none), nor a prefix cache: every request goes upstream with
its workspace's `cache_salt` (callers cannot set their own), so vLLM reuses cached prefixes
only within one workspace and no tenant can time another's prompts. Billed per token,
never per hour. Destroying a logical instance leaves the host serving the others.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from nacl.encoding import HexEncoder
from nacl.hash import blake2b
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auxen.auth.sealing import seal, unseal
from auxen.inference.host_guard import DUPLICATE_HOST, live_host, stop_extra_hosts
from auxen.store.models import Instance, InstanceState, Workspace

if TYPE_CHECKING:
    from auxen.inference.lifecycle import InstanceManager

SHARED_TIER = "shared-small"
HOST_TIER = "shared-host"
HOSTS_WORKSPACE = "ws_shared_hosts"
HOST_TTL = timedelta(days=3650)  # hosts live until no longer wanted, not by a clock
S = InstanceState
_HOST_LIVE = (S.PENDING, S.PROVISIONING, S.STARTING, S.READY)


def cache_salt(master_key: bytes, workspace_id: str) -> str:
    """The workspace's prefix-cache salt on shared hosts: stable (its cache keeps
    working), unguessable without the master key, and never the workspace id itself."""
    digest = blake2b(
        workspace_id.encode(), digest_size=16, key=master_key,
        person=b"auxen-kv-salt", encoder=HexEncoder,
    )  # fmt: skip
    return bytes(digest).decode()


class SharedTier:
    def __init__(self, manager: InstanceManager) -> None:
        self.manager = manager
        self.db = manager.db
        self.settings = manager.settings
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def lock_for(self, model: str) -> asyncio.Lock:
        """Held while a model's host is chosen or started, and while it is scaled to zero."""
        return self._locks[model]

    async def host_for(self, instance: Instance) -> Instance:
        """The live host serving `instance`'s model, started if there is none."""
        host, made = await self._host_row(instance)
        if made:
            await self.manager.launch(host.id)
        return host

    async def _host_row(self, instance: Instance) -> tuple[Instance, bool]:
        """The model's live host, made (pending) if there is none; True when made. One
        per model across every server: see `auxen.inference.host_guard`."""
        async with (
            self._locks[instance.model],
            AsyncSession(self.db.locking_engine, expire_on_commit=False) as session,
        ):
            return await live_host(
                session, HOSTS_WORKSPACE, instance.model,
                lambda: self._new_host(session, instance),
            )  # fmt: skip

    async def _new_host(self, session: AsyncSession, instance: Instance) -> Instance:
        """A pending host for `instance`'s model, added to `session` (not committed)."""
        now = datetime.now(UTC)
        if await session.get(Workspace, HOSTS_WORKSPACE) is None:
            session.add(Workspace(id=HOSTS_WORKSPACE, name="shared-small hosts"))
            await session.flush()
        host = Instance(
            workspace_id=HOSTS_WORKSPACE,
            livemode=True,
            model=instance.model,
            gpu_type=instance.gpu_type,
            tier=HOST_TIER,
            provider=instance.provider,
            state=S.PENDING,
            hourly_price_micros=0,  # paid for by the tokens of the instances it serves
            ttl_seconds=int(HOST_TTL.total_seconds()),
            expires_at=now + HOST_TTL,
            upstream_key_sealed=seal(
                self.settings.master_key_bytes, HOSTS_WORKSPACE, secrets.token_urlsafe(32)
            ),
            created_at=now,
        )
        session.add(host)
        return host

    async def attach(self, instance: Instance) -> None:
        """Bring a logical instance up: wait for its host, then take its address and key."""
        host = await self.host_for(instance)
        await self.manager._set_detail(instance.id, f"waiting for the shared server {host.id}")
        deadline = time.monotonic() + self.manager.provider.ready_timeout_s
        while True:
            current = await self.manager._load(host.id)
            if current is not None and current.destroy_reason == DUPLICATE_HOST:
                host = await self.host_for(instance)  # the reconciler kept another one
                continue
            if current is None or current.state in (S.FAILED, S.DESTROYED, S.STOPPING):
                await self.manager._fail(instance.id, "the shared server for this model failed")
                return
            if current.state is S.READY and current.upstream_key_sealed and current.upstream_url:
                key = unseal(
                    self.settings.master_key_bytes, HOSTS_WORKSPACE, current.upstream_key_sealed
                )
                await self.manager._transition(
                    instance.id,
                    [S.PROVISIONING, S.STARTING],
                    S.READY,
                    upstream_url=current.upstream_url,
                    upstream_key_sealed=seal(
                        self.settings.master_key_bytes, instance.workspace_id, key
                    ),
                    ready_at=datetime.now(UTC),
                    status_detail=None,
                )
                return
            if time.monotonic() > deadline:
                await self.manager._fail(instance.id, "the shared server did not become ready")
                return
            await asyncio.sleep(1.0)

    async def stop_extra_hosts(self) -> list[str]:
        """For the reconciler: hosts beyond one per model go (see host_guard)."""
        return await stop_extra_hosts(self.manager, HOSTS_WORKSPACE, HOST_TIER, SHARED_TIER)

    async def check(self, instance: Instance) -> bool:
        """For the reconciler: False when a ready logical instance lost its host."""
        if instance.state is not S.READY:
            return True
        async with self.db.scoped(HOSTS_WORKSPACE) as session:
            host = (
                await session.exec(
                    select(Instance)
                    .where(col(Instance.model) == instance.model)
                    .where(col(Instance.state) == S.READY.value)
                    .where(col(Instance.upstream_url) == instance.upstream_url)
                )
            ).first()
        return host is not None
