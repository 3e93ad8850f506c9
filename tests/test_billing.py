"""The ledger on real databases (SQLite and PostgreSQL): balances derived from rows,
reservations that never let concurrent work spend past the money or a cap, settlement
that charges at most what was reserved, credits applied once. And the price book."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from auxen.billing.alerts import Alerts
from auxen.billing.catalog import PriceFileError, TokenPrices, load_prices
from auxen.billing.ledger import Ledger, Spend
from auxen.billing.meter import GpuMeter
from auxen.store.db import Database
from auxen.store.models import (
    CapScope,
    Instance,
    InstanceState,
    LedgerKind,
    SpendingCap,
    Workspace,
)
from auxen.tools.errors import OverBudget
from tests.ledger_checks import SETTLEMENTS


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.migrate()
    try:
        yield database
    finally:
        await database.close()


async def workspace(db: Database, credits_micros: int = 0) -> str:
    ws = Workspace(name="billing")
    async with db.system() as session:
        session.add(ws)
        await session.commit()
    if credits_micros:
        await Ledger(db).credit(
            ws.id, True, credits_micros, kind=LedgerKind.GRANT, reference=f"start-{ws.id}"
        )
    return ws.id


async def cap(db: Database, ws: str, scope: CapScope, micros: int, subject: str = "") -> None:
    async with db.system() as session:
        session.add(
            SpendingCap(
                workspace_id=ws, livemode=True, scope=scope, subject=subject,
                amount_micros=micros,
            )
        )  # fmt: skip
        await session.commit()


async def ledger_is_consistent(db: Database, ws: str) -> None:
    """Every closed reservation was charged plus released exactly what it held; every
    open one has neither."""
    async with db.engine.connect() as conn:
        rows = await conn.execute(sa.text(SETTLEMENTS), {"w": ws})
        for rid, amount, is_open, settled in rows.all():
            assert settled == (0 if is_open else amount), rid


async def test_concurrent_reservations_never_overshoot(db: Database) -> None:
    ws = await workspace(db, credits_micros=5_000)
    ledger = Ledger(db)
    spend = Spend(ws, True, "inst_x", "tokens")
    # A second engine and ledger stand for a second server process: only the lock in
    # the database (a row lock, or SQLite's write lock) can keep the two apart.
    other = Database(db.url)
    ledgers = [ledger, Ledger(other)]

    async def attempt(i: int) -> str | None:
        try:
            return await ledgers[i % 2].reserve(spend, 1_000)
        except OverBudget as exc:
            assert exc.limit == "balance"
            return None

    try:
        holds = await asyncio.gather(*(attempt(i) for i in range(16)))
    finally:
        await other.close()
    granted = [h for h in holds if h]
    assert len(granted) == 5  # exactly what the balance covers
    balance = await ledger.balance(ws, True)
    assert balance.available_micros == 0 and balance.held_micros == 5_000
    # Settle: charged what was used (never more than reserved), the rest released.
    charged = [
        await ledger.settle(h, used)
        for h, used in zip(granted, (0, 400, 1000, 5000, 999), strict=True)
    ]
    assert charged == [0, 400, 1000, 1000, 999]
    assert await ledger.settle(granted[1], 400) == 0  # settling twice does nothing
    balance = await ledger.balance(ws, True)
    assert balance.held_micros == 0 and balance.balance_micros == 5_000 - 3_399
    await ledger_is_consistent(db, ws)


async def test_caps_bound_what_can_be_reserved(db: Database) -> None:
    ws = await workspace(db, credits_micros=1_000_000)
    ledger = Ledger(db)
    await cap(db, ws, CapScope.INSTANCE, 3_000, subject="inst_capped")
    await cap(db, ws, CapScope.CLIENT_MONTHLY, 2_500, subject="https://agent.example/c.json")
    await cap(db, ws, CapScope.MONTHLY, 10_000)
    capped = Spend(ws, True, "inst_capped", "gpu_time")
    assert await ledger.reserve(capped, 2_000)
    with pytest.raises(OverBudget) as refused:
        await ledger.reserve(capped, 1_500)
    assert refused.value.limit == "instance" and "set_spending_cap" in refused.value.message
    agent = Spend(ws, True, "inst_other", "tokens", client_id="https://agent.example/c.json")
    assert await ledger.reserve(agent, 2_500)
    with pytest.raises(OverBudget) as refused:
        await ledger.reserve(agent, 1)
    assert refused.value.limit == "client_monthly"
    plain = Spend(ws, True, "inst_third", "tokens")
    assert await ledger.reserve(plain, 5_500)  # 2000 + 2500 + 5500 = the monthly 10000
    with pytest.raises(OverBudget) as refused:
        await ledger.reserve(plain, 1)
    assert refused.value.limit == "monthly"
    await ledger_is_consistent(db, ws)


async def test_the_burn_cap_is_checked_for_new_instances(db: Database) -> None:
    ws = await workspace(db, credits_micros=1_000_000)
    await cap(db, ws, CapScope.MAX_BURN, 5_000_000)
    ledger = Ledger(db)
    spend = Spend(ws, True, "inst_new", "gpu_time")
    assert await ledger.reserve(spend, 100, adds_hourly_micros=4_000_000) is not None
    with pytest.raises(OverBudget) as refused:
        await ledger.reserve(spend, 100, adds_hourly_micros=6_000_000)
    assert refused.value.limit == "max_burn"


async def test_credits_apply_once_and_reversals_take_them_back(db: Database) -> None:
    ws = await workspace(db)
    ledger = Ledger(db)
    assert await ledger.credit(ws, True, 20_000_000, kind=LedgerKind.PURCHASE, reference="cs_1")
    assert not await ledger.credit(ws, True, 20_000_000, kind=LedgerKind.PURCHASE, reference="cs_1")
    assert await ledger.credit(ws, True, 5_000_000, kind=LedgerKind.REVERSAL, reference="re_1")
    assert (await ledger.balance(ws, True)).balance_micros == 15_000_000
    assert (await ledger.balance(ws, False)).balance_micros == 0  # test mode is apart
    for kind, amount in ((LedgerKind.CHARGE, 5), (LedgerKind.PURCHASE, 0), (LedgerKind.GRANT, -1)):
        with pytest.raises(ValueError):
            await ledger.credit(ws, True, amount, kind=kind, reference="bad")
    with pytest.raises(ValueError):
        await ledger.reserve(Spend(ws, True, "inst_x", "tokens"), -5)


def test_price_book(tmp_path: Path) -> None:
    assert TokenPrices(100_000, 400_000).cost(1, 1) == 1  # fractions round up
    assert TokenPrices(100_000, 400_000).cost(1_000_000, 1_000_000) == 500_000
    assert load_prices(None).gpu_types["L4"].hourly_price_micros == 800_000
    prices = tmp_path / "prices.toml"
    prices.write_text(
        '[gpu.cpu]\nhourly_usd = "3.60"\n[shared_small]\n'
        'input_usd_per_million = "1"\noutput_usd_per_million = "2.5"\n'
    )
    book = load_prices(prices)
    assert book.gpu_types["cpu"].hourly_price_micros == 3_600_000
    assert book.shared_small.output_micros_per_million == 2_500_000
    bad_files = (
        '[gpu.nope]\nhourly_usd = "1"',
        '[gpu.cpu]\nhourly_usd = "-1"',
        '[gpu.cpu]\nhourly_usd = "NaN"',
        '[gpu.cpu]\nhourly_usd = "1e9"',
        "not toml [",
    )
    for bad in bad_files:
        prices.write_text(bad)
        with pytest.raises(PriceFileError):
            load_prices(prices)
    assert Decimal("0.000001") * 1_000_000 == 1


async def test_two_processes_metering_one_instance_reserve_each_window_once(db: Database) -> None:
    """Every server process runs the GPU meter: two at once (two engines) must not both
    reserve, and so both charge, the same window."""
    ws = await workspace(db, credits_micros=1_000_000)
    now = datetime.now(UTC)
    instance = Instance(
        workspace_id=ws, livemode=True, model="m", gpu_type="L4", tier="dedicated",
        provider="local", state=InstanceState.READY, hourly_price_micros=3_600_000,
        ttl_seconds=3600, expires_at=now + timedelta(hours=1), created_at=now,
    )  # fmt: skip
    async with db.system() as session:
        session.add(instance)
        await session.commit()
    other = Database(db.url)

    async def nothing(_id: str, _reason: str) -> None:
        raise AssertionError("nothing should be destroyed")

    meters = [
        GpuMeter(d, Ledger(d), 60.0, destroy=nothing, alerts=Alerts(d, bytes(32), production=False))
        for d in (db, other)
    ]
    try:
        for _ in range(3):
            await asyncio.gather(*(m.run_once() for m in meters))
    finally:
        await other.close()
    async with db.engine.connect() as conn:
        windows = (
            await conn.execute(
                sa.text("SELECT COUNT(*) FROM reservation WHERE instance_id = :i"),
                {"i": instance.id},
            )
        ).scalar_one()
    assert windows == 1  # one window of 60 s, reserved once, by whichever came first
    assert (await Ledger(db).balance(ws, True)).held_micros == 60_000


async def test_a_balance_or_cap_nearly_used_is_told_once(db: Database) -> None:
    """The meter warns (spend_limit_near) when the balance has under an hour of the
    running instances left, or a cap is 80% used; once per cap and period."""
    ws = await workspace(db, credits_micros=1_000_000)  # $1, less than an hour at $3.60/h
    now = datetime.now(UTC)
    instance = Instance(
        workspace_id=ws, livemode=True, model="m", gpu_type="L4", tier="dedicated",
        provider="local", state=InstanceState.READY, hourly_price_micros=3_600_000,
        ttl_seconds=3600, expires_at=now + timedelta(hours=1), created_at=now,
    )  # fmt: skip
    async with db.system() as session:
        session.add(instance)
        await session.commit()
    await cap(db, ws, CapScope.INSTANCE, 70_000, subject=instance.id)  # a window is 60_000

    async def nothing(_id: str, _reason: str) -> None:
        raise AssertionError("nothing should be destroyed")

    meter = GpuMeter(
        db, Ledger(db), 60.0, destroy=nothing, alerts=Alerts(db, bytes(32), production=False)
    )
    await meter.run_once()
    await meter._warn_if_near(instance, datetime.now(UTC))  # a second look: told already
    async with db.engine.connect() as conn:
        told = (
            await conn.execute(
                sa.text("SELECT event, data_json FROM notification WHERE workspace_id = :w"),
                {"w": ws},
            )
        ).all()
    limits = sorted(json.loads(data)["limit"] for event, data in told)
    assert {event for event, _ in told} == {"spend_limit_near"} and limits == [
        "balance",
        "instance",
    ]
    by_limit = {json.loads(d)["limit"]: json.loads(d) for _, d in told}
    assert (
        by_limit["instance"]["used_usd"] == "0.06" and by_limit["instance"]["limit_usd"] == "0.07"
    )
    assert by_limit["balance"]["burn_usd_per_hour"] == "3.6"
