"""The sums the dashboard shows, on each database: usage per day and per instance, what
the ledger charged, the statement and instance counts, kept to one workspace and one
mode; bad windows and pages are refused with a typed error."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from auxen.config import Settings
from auxen.runtime import Runtime
from auxen.store.models import (
    Instance,
    InstanceState,
    LedgerEntry,
    LedgerKind,
    Role,
    UsageRecord,
    Workspace,
)
from auxen.tools import billing, instances, usage
from auxen.tools.context import Caller
from auxen.tools.errors import InvalidArgument

NOW = datetime.now(UTC)


def run(database_url: str, data: Path, body: Callable[[Runtime], Awaitable[None]]) -> None:
    async def go() -> None:
        rt = Runtime.build(Settings(database_url=database_url, data_dir=data))
        await rt.start(background=False)
        try:
            await body(rt)
        finally:
            await rt.close()

    asyncio.run(go())


def _instance(ws: str, n: int, *, live: bool = True, state: str = "destroyed") -> Instance:
    return Instance(
        id=f"inst_{ws[-4:]}{n:04d}", workspace_id=ws, livemode=live, model=f"org/m{n}",
        gpu_type="cpu", tier="dedicated", provider="local", state=InstanceState(state),
        hourly_price_micros=1_000_000, ttl_seconds=3600, expires_at=NOW, created_at=NOW,
    )  # fmt: skip


def _use(ws: str, instance: str, prompt: int, completion: int, days_ago: int) -> UsageRecord:
    return UsageRecord(
        workspace_id=ws, instance_id=instance, endpoint="chat.completions", model="m",
        stream=False, status_code=200, outcome="ok", prompt_tokens=prompt,
        completion_tokens=completion, latency_ms=1.0,
        created_at=NOW - timedelta(days=days_ago),
    )  # fmt: skip


def _charge(ws: str, instance: str, micros: int, days_ago: int, live: bool = True) -> LedgerEntry:
    return LedgerEntry(
        workspace_id=ws, livemode=live, kind=LedgerKind.CHARGE, amount_micros=micros,
        instance_id=instance, created_at=NOW - timedelta(days=days_ago),
    )  # fmt: skip


def test_usage_is_summed_per_day_and_instance_within_one_workspace_and_mode(
    database_url: str, tmp_path: Path
) -> None:
    async def body(rt: Runtime) -> None:
        async with rt.db.system() as s:
            s.add_all([Workspace(id="ws_dashA", name="A"), Workspace(id="ws_dashB", name="B")])
            await s.commit()
            a1, a2 = _instance("ws_dashA", 1), _instance("ws_dashA", 2, state="ready")
            test_mode = _instance("ws_dashA", 3, live=False)
            other = _instance("ws_dashB", 1)
            s.add_all([a1, a2, test_mode, other])
            await s.commit()
            s.add_all([
                _use("ws_dashA", a1.id, 10, 5, 0), _use("ws_dashA", a1.id, 20, 5, 0),
                _use("ws_dashA", a1.id, 7, 3, 2), _use("ws_dashA", a2.id, 100, 50, 1),
                _use("ws_dashA", a1.id, 999, 999, 40),  # outside a 7-day window
                _use("ws_dashA", test_mode.id, 500, 500, 0),  # test mode
                _use("ws_dashB", other.id, 800, 800, 0),  # another workspace
                _charge("ws_dashA", a1.id, 3000, 0), _charge("ws_dashA", a1.id, 2000, 2),
                _charge("ws_dashA", a2.id, 9000, 1), _charge("ws_dashA", test_mode.id, 7, 0, False),
                _charge("ws_dashB", other.id, 5, 0),
                LedgerEntry(workspace_id="ws_dashA", livemode=True, kind=LedgerKind.PURCHASE,
                            amount_micros=10_000_000, reference="p1",
                            created_at=NOW - timedelta(minutes=1)),
                LedgerEntry(workspace_id="ws_dashA", livemode=True, kind=LedgerKind.RESERVATION,
                            amount_micros=4000, instance_id=a2.id, created_at=NOW),
            ])  # fmt: skip
            await s.commit()
        caller = Caller(workspace_id="ws_dashA", livemode=True, role=Role.OWNER)
        week = await usage.usage_breakdown(rt, caller, days=7)
        assert len(week.days) == 7 and week.days[-1].day == NOW.date()
        by_day = {d.day: d for d in week.days}
        today, yesterday = by_day[NOW.date()], by_day[NOW.date() - timedelta(days=1)]
        assert (today.requests, today.prompt_tokens, today.completion_tokens) == (2, 30, 10)
        assert today.charged_micros == 3000 and yesterday.charged_micros == 9000
        assert sum(d.requests for d in week.days) == 4
        # Dearest first; the other workspace, the test mode and the old row stay out.
        rows = [(i.instance_id, i.requests, i.tokens, i.charged_micros) for i in week.instances]
        assert rows == [(a2.id, 1, 150, 9000), (a1.id, 3, 50, 5000)]
        assert week.instances[0].state is InstanceState.READY
        quarter = await usage.usage_breakdown(rt, caller, days=90)
        assert [i.tokens for i in quarter.instances] == [150, 2048]
        tested = await usage.usage_breakdown(rt, Caller("ws_dashA", livemode=False), days=7)
        assert [(i.instance_id, i.tokens, i.charged_micros) for i in tested.instances] == [
            (test_mode.id, 1000, 7)
        ]
        assert await usage.charged_by_instance(rt, caller, [a1.id, other.id]) == {a1.id: 5000}
        # The statement: money in and out, not reservations, newest first, paged.
        entries, total = await billing.list_ledger(rt, caller, limit=2)
        assert total == 4 and [e.kind for e in entries] == [LedgerKind.CHARGE, LedgerKind.PURCHASE]
        assert await instances.count_instances(rt, caller) == 2
        ready = await instances.count_instances(rt, caller, states=[InstanceState.READY])
        assert ready == 1
        page = await instances.list_instances(rt, caller, limit=1, offset=1)
        assert len(page) == 1
        for bad in (
            usage.usage_breakdown(rt, caller, days=0),
            usage.usage_breakdown(rt, caller, days=367),
            billing.list_ledger(rt, caller, limit=0),
            billing.list_ledger(rt, caller, offset=-1),
            instances.list_instances(rt, caller, offset=-1),
        ):
            with pytest.raises(InvalidArgument):
                await bad
        async with rt.db.engine.connect() as conn:  # nothing changed by any of it
            assert (await conn.execute(sa.text("SELECT COUNT(*) FROM ledger_entry"))).scalar() == 7

    run(database_url, tmp_path / "data", body)
