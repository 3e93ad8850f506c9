"""One shared-small host per model across processes: the choice is guarded in the
database, and the reconciler stops hosts found in excess (after moving the instances
they serve). Real databases, several real managers (one per would-be process)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import col, select

from auxen.auth.sealing import seal, unseal
from auxen.config import Settings
from auxen.inference.lifecycle import InstanceManager
from auxen.inference.providers.local import LocalVllmProvider
from auxen.inference.shared import HOST_TIER, HOSTS_WORKSPACE, SHARED_TIER
from auxen.store.db import Database
from auxen.store.models import Instance, InstanceState, Workspace
from tests.test_store import _instance, run


def manager(db: Database, tmp: Path) -> InstanceManager:
    settings = Settings(_env_file=None, data_dir=tmp, instance_lease_s=60)
    return InstanceManager(db, LocalVllmProvider(settings), settings)


def test_servers_choosing_a_host_at_once_choose_one(database_url: str, tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        # Three processes' shared tiers (each with its own in-process lock) and one model.
        managers = [manager(db, tmp_path) for _ in range(3)]
        wanted = _instance("ws_any")
        wanted.model = "org/shared"
        hosts = await asyncio.gather(
            *(
                m.shared._host_row(wanted)  # the choice, without starting anything
                for m in managers
                for _ in range(4)
            )
        )
        assert len({host.id for host, _ in hosts}) == 1
        assert sum(made for _, made in hosts) == 1
        async with db.system() as session:  # never started: nothing for others to resume
            await session.exec(
                sa.update(Instance)
                .where(col(Instance.id) == hosts[0][0].id)
                .values(state=InstanceState.DESTROYED.value)
            )
            await session.commit()
        for m in managers:
            await m.close()

    run(database_url, body)


def test_the_reconciler_stops_extra_hosts_and_moves_their_instances(
    database_url: str, tmp_path: Path
) -> None:
    async def body(db: Database) -> None:
        m = manager(db, tmp_path)
        master = m.settings.master_key_bytes
        now = datetime.now(UTC)
        async with db.system() as session:
            if await session.get(Workspace, HOSTS_WORKSPACE) is None:
                session.add(Workspace(id=HOSTS_WORKSPACE, name="hosts"))
            customer = Workspace(name="customer")
            session.add(customer)
            await session.flush()
            hosts = []
            for n, url in enumerate(("http://127.0.0.1:1", "http://127.0.0.1:2")):
                host = _instance(HOSTS_WORKSPACE)
                host.model, host.tier, host.upstream_url = "org/two", HOST_TIER, url
                host.provider = "elsewhere"  # no process here for the pass to find missing
                host.upstream_key_sealed = seal(master, HOSTS_WORKSPACE, f"host-key-{n}")
                host.created_at = now + timedelta(seconds=n)
                host.expires_at = now + timedelta(days=1)
                hosts.append(host)
            served = _instance(customer.id)
            served.model, served.tier, served.provider = "org/two", SHARED_TIER, "elsewhere"
            served.upstream_url = hosts[1].upstream_url
            served.upstream_key_sealed = seal(master, customer.id, "host-key-1")
            served.expires_at = now + timedelta(days=1)
            session.add_all([*hosts, served])
            await session.commit()
        await m.reconcile()
        async with db.system() as session:
            extra = await session.get(Instance, hosts[1].id)
            moved = await session.get(Instance, served.id)
            live = (
                await session.exec(
                    select(Instance)
                    .where(col(Instance.tier) == HOST_TIER)
                    .where(col(Instance.state) == InstanceState.READY.value)
                )
            ).all()
        assert [h.id for h in live] == [hosts[0].id]
        assert extra is not None and extra.state is InstanceState.DESTROYED
        assert moved is not None and moved.state is InstanceState.READY
        assert moved.upstream_url == hosts[0].upstream_url
        assert moved.upstream_key_sealed is not None
        assert unseal(master, customer.id, moved.upstream_key_sealed) == "host-key-0"
        await m.close()

    run(database_url, body)
