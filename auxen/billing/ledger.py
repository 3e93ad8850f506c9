"""The credits ledger, and reservations that keep every spend inside the money and caps.

Every purchase, grant, reservation, charge, release and reversal is a row that is never
updated; balances are sums over them (see `LedgerKind`). Work that costs money first
reserves what it may cost, under the wallet's lock, after checking the balance and every
cap that applies; it is settled afterwards (charged what it used, at most what was
reserved, and the rest released). So concurrent and streamed work can never spend more
than was there: the overshoot is zero by construction, not by luck of timing.

The wallet lock is a row lock on the workspace (`SELECT ... FOR UPDATE`) on PostgreSQL
and the database's write lock (`BEGIN IMMEDIATE`) on SQLite, so every process shares it;
an asyncio lock in front keeps one process's callers from queueing in the database.
Amounts are integer micro-dollars.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col

from auxen.store.db import Database
from auxen.store.ids import new_id
from auxen.store.models import (
    CapScope,
    Instance,
    LedgerEntry,
    LedgerKind,
    Reservation,
    SpendingCap,
    Workspace,
    as_utc,
)
from auxen.tools.errors import OverBudget
from auxen.tools.views import micros_to_usd

K = LedgerKind
BURNING_STATES = ("pending", "provisioning", "starting", "ready")


@dataclass(frozen=True)
class Balance:
    balance_micros: int  # credits in, minus what was spent
    held_micros: int  # reserved for work in progress

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.held_micros


@dataclass(frozen=True)
class Spend:
    """What a reservation is for: who spends, on what."""

    workspace_id: str
    livemode: bool
    instance_id: str
    purpose: str  # gpu_time | tokens
    client_id: str | None = None


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class Ledger:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._locks: defaultdict[tuple[str, bool], asyncio.Lock] = defaultdict(asyncio.Lock)

    @asynccontextmanager
    async def _wallet(self, workspace_id: str, livemode: bool) -> AsyncIterator[AsyncConnection]:
        """One transaction holding the wallet's lock."""
        lock = self._locks[(workspace_id, livemode)]
        async with lock, self.db.locking_engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(
                    sa.select(col(Workspace.id))
                    .where(col(Workspace.id) == workspace_id)
                    .with_for_update()
                )
            yield conn

    # -- reading ---------------------------------------------------------------------

    async def balance(self, workspace_id: str, livemode: bool) -> Balance:
        async with self.db.engine.connect() as conn:
            return await _balance(conn, workspace_id, livemode)

    async def committed(
        self,
        workspace_id: str,
        livemode: bool,
        *,
        instance_id: str | None = None,
        client_id: str | None = None,
        since: datetime | None = None,
    ) -> int:
        """Money spent or set aside (reserved minus released) for what the filters name."""
        async with self.db.engine.connect() as conn:
            return await _committed(conn, workspace_id, livemode, instance_id, client_id, since)

    async def burn_rate(self, workspace_id: str, livemode: bool) -> int:
        """$/h (micro-dollars) of the workspace's running instances, as the burn cap
        sees it."""
        async with self.db.engine.connect() as conn:
            return await _burn(conn, workspace_id, livemode)

    # -- moving money ----------------------------------------------------------------

    async def reserve(
        self,
        spend: Spend,
        amount_micros: int,
        *,
        window: tuple[datetime, datetime] | None = None,
        adds_hourly_micros: int = 0,
        unless_paid_beyond: datetime | None = None,
    ) -> str | None:
        """Set `amount_micros` aside for `spend`, or raise OverBudget naming the limit in
        the way. `adds_hourly_micros`: the $/h a new instance adds to the burn rate.
        `unless_paid_beyond`: reserve nothing if the instance's GPU time is already
        reserved past then (another process extended it first; checked under the lock).
        None when nothing was reserved."""
        if amount_micros < 0:
            raise ValueError("a reservation cannot be negative")
        async with self._wallet(spend.workspace_id, spend.livemode) as conn:
            if unless_paid_beyond is not None:
                paid = (
                    await conn.execute(
                        sa.select(sa.func.max(Reservation.window_end)).where(
                            col(Reservation.instance_id) == spend.instance_id,
                            col(Reservation.window_end).is_not(None),
                        )
                    )
                ).scalar_one()
                if paid is not None and as_utc(paid) > unless_paid_beyond:
                    return None
            await self._check_limits(conn, spend, amount_micros, adds_hourly_micros)
            if amount_micros == 0:
                return None
            reservation_id = new_id("rsv")
            await conn.execute(
                sa.insert(Reservation).values(
                    id=reservation_id,
                    workspace_id=spend.workspace_id,
                    livemode=spend.livemode,
                    purpose=spend.purpose,
                    instance_id=spend.instance_id,
                    client_id=spend.client_id,
                    amount_micros=amount_micros,
                    open=True,
                    window_start=window[0] if window else None,
                    window_end=window[1] if window else None,
                    created_at=datetime.now(UTC),
                )
            )
            await _entry(conn, spend, K.RESERVATION, amount_micros, reservation_id)
            return reservation_id

    async def settle(self, reservation_id: str | None, spent_micros: int) -> int:
        """Charge what was spent (never more than was reserved) and release the rest;
        the amount charged. Settling a closed reservation does nothing (idempotent)."""
        if reservation_id is None:
            return 0
        async with self.db.engine.begin() as conn:
            closed = await conn.execute(
                sa.update(Reservation)
                .where(col(Reservation.id) == reservation_id, col(Reservation.open).is_(True))
                .values(open=False, closed_at=datetime.now(UTC))
                .returning(
                    col(Reservation.workspace_id),
                    col(Reservation.livemode),
                    col(Reservation.instance_id),
                    col(Reservation.purpose),
                    col(Reservation.client_id),
                    col(Reservation.amount_micros),
                )
            )
            row = closed.one_or_none()
            if row is None:
                return 0
            ws, livemode, instance_id, purpose, client_id, reserved = row
            spend = Spend(ws, livemode, instance_id, purpose, client_id)
            charged = max(0, min(spent_micros, reserved))
            if charged:
                await _entry(conn, spend, K.CHARGE, charged, reservation_id)
            if reserved - charged:
                await _entry(conn, spend, K.RELEASE, reserved - charged, reservation_id)
            return charged

    async def credit(
        self,
        workspace_id: str,
        livemode: bool,
        amount_micros: int,
        *,
        kind: LedgerKind,
        reference: str,
        note: str = "",
        also: Callable[[AsyncConnection], Awaitable[None]] | None = None,
        running_total_of: str | None = None,
    ) -> bool:
        """Add (purchase, grant) or take back (reversal) credits, once per `reference`:
        False if that reference was already applied. `also` runs in the same
        transaction (recording the Stripe event that caused it, say).
        `running_total_of`: `amount_micros` is a running total (a charge's refunds so
        far) over the entries whose reference starts with this; only what it adds to
        them is applied, read under the wallet's lock, so concurrent totals for one
        charge never add up to more than the largest (False when it adds nothing)."""
        if kind not in (K.PURCHASE, K.GRANT, K.REVERSAL) or amount_micros <= 0:
            raise ValueError(f"cannot credit {kind} of {amount_micros}")
        async with self._wallet(workspace_id, livemode) as conn:
            seen = await conn.execute(
                sa.select(col(LedgerEntry.id)).where(
                    col(LedgerEntry.workspace_id) == workspace_id,
                    col(LedgerEntry.kind) == kind.value,
                    col(LedgerEntry.reference) == reference,
                )
            )
            if seen.first() is not None:
                return False
            if running_total_of is not None:
                so_far = await conn.execute(
                    sa.select(sa.func.coalesce(sa.func.sum(LedgerEntry.amount_micros), 0)).where(
                        col(LedgerEntry.workspace_id) == workspace_id,
                        col(LedgerEntry.kind) == kind.value,
                        col(LedgerEntry.reference).startswith(running_total_of),
                    )
                )
                amount_micros -= int(so_far.scalar_one())
                if amount_micros <= 0:
                    return False
            if also is not None:
                await also(conn)
            await conn.execute(
                sa.insert(LedgerEntry).values(
                    id=new_id("led"),
                    workspace_id=workspace_id,
                    livemode=livemode,
                    kind=kind.value,
                    amount_micros=amount_micros,
                    reference=reference,
                    note=note[:200],
                    created_at=datetime.now(UTC),
                )
            )
            return True

    # -- limits ----------------------------------------------------------------------

    async def _check_limits(
        self, conn: AsyncConnection, spend: Spend, amount: int, adds_hourly: int
    ) -> None:
        ws, live = spend.workspace_id, spend.livemode
        caps = (
            await conn.execute(
                sa.select(SpendingCap).where(
                    col(SpendingCap.workspace_id) == ws, col(SpendingCap.livemode) == live
                )
            )
        ).all()
        now = datetime.now(UTC)
        for cap in caps:
            limit = cap.amount_micros
            if cap.scope == CapScope.MAX_BURN:
                if adds_hourly and await _burn(conn, ws, live) + adds_hourly > limit:
                    raise OverBudget(
                        f"this instance would take the workspace's burn rate past its cap of "
                        f"${micros_to_usd(limit)}/hour; destroy an instance or raise the cap",
                        limit="max_burn",
                    )
                continue
            if amount == 0:
                continue
            if cap.scope == CapScope.INSTANCE and cap.subject == spend.instance_id:
                used = await _committed(conn, ws, live, spend.instance_id, None, None)
                what = "this instance's spending cap"
            elif cap.scope == CapScope.MONTHLY:
                used = await _committed(conn, ws, live, None, None, month_start(now))
                what = "the workspace's monthly budget"
            elif cap.scope == CapScope.CLIENT_MONTHLY and cap.subject == spend.client_id:
                used = await _committed(conn, ws, live, None, spend.client_id, month_start(now))
                what = "this agent's monthly budget"
            else:
                continue
            if used + amount > limit:
                raise OverBudget(
                    f"{what} of ${micros_to_usd(limit)} would be exceeded "
                    f"(${micros_to_usd(used)} spent or reserved, ${micros_to_usd(amount)} "
                    "more needed); raise it with set_spending_cap",
                    limit=cap.scope.value,
                )
        if amount and (await _balance(conn, ws, live)).available_micros < amount:
            raise OverBudget(
                f"the balance cannot cover ${micros_to_usd(amount)}; buy credits "
                "(buy_credits, or Billing in the dashboard)",
                limit="balance",
            )


async def _entry(
    conn: AsyncConnection, spend: Spend, kind: LedgerKind, amount: int, reservation_id: str
) -> None:
    await conn.execute(
        sa.insert(LedgerEntry).values(
            id=new_id("led"),
            workspace_id=spend.workspace_id,
            livemode=spend.livemode,
            kind=kind.value,
            amount_micros=amount,
            reservation_id=reservation_id,
            instance_id=spend.instance_id,
            client_id=spend.client_id,
            note=spend.purpose,
            created_at=datetime.now(UTC),
        )
    )


async def _sums(
    conn: AsyncConnection, workspace_id: str, livemode: bool, *filters: sa.ColumnElement[bool]
) -> dict[str, int]:
    rows = await conn.execute(
        sa.select(
            col(LedgerEntry.kind), sa.func.coalesce(sa.func.sum(LedgerEntry.amount_micros), 0)
        )
        .where(col(LedgerEntry.workspace_id) == workspace_id)
        .where(col(LedgerEntry.livemode) == livemode)
        .where(*filters)
        .group_by(col(LedgerEntry.kind))
    )
    return {str(kind): int(total) for kind, total in rows.all()}


async def _balance(conn: AsyncConnection, workspace_id: str, livemode: bool) -> Balance:
    s = await _sums(conn, workspace_id, livemode)

    def get(k: LedgerKind) -> int:
        return s.get(k.value, 0)

    return Balance(
        balance_micros=get(K.PURCHASE) + get(K.GRANT) - get(K.CHARGE) - get(K.REVERSAL),
        held_micros=get(K.RESERVATION) - get(K.RELEASE) - get(K.CHARGE),
    )


async def _committed(
    conn: AsyncConnection,
    workspace_id: str,
    livemode: bool,
    instance_id: str | None,
    client_id: str | None,
    since: datetime | None,
) -> int:
    filters: list[sa.ColumnElement[bool]] = []
    if instance_id is not None:
        filters.append(col(LedgerEntry.instance_id) == instance_id)
    if client_id is not None:
        filters.append(col(LedgerEntry.client_id) == client_id)
    if since is not None:  # reservations made since then, whenever they were released
        made_since = sa.select(col(Reservation.id)).where(
            col(Reservation.workspace_id) == workspace_id, col(Reservation.created_at) >= since
        )
        filters.append(col(LedgerEntry.reservation_id).in_(made_since))
    s = await _sums(conn, workspace_id, livemode, *filters)
    return s.get(K.RESERVATION.value, 0) - s.get(K.RELEASE.value, 0)


async def _burn(conn: AsyncConnection, workspace_id: str, livemode: bool) -> int:
    """$/h (micro-dollars) of the workspace's instances that are running or starting."""
    total = await conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(Instance.hourly_price_micros), 0))
        .where(col(Instance.workspace_id) == workspace_id, col(Instance.livemode) == livemode)
        .where(col(Instance.state).in_(BURNING_STATES))
    )
    return int(total.scalar_one())
