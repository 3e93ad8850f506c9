"""Money as callers see it: the balance, the caps that bound spending, setting them.

Only an owner or admin may change caps (see tools.permissions; an OAuth grant also needs
the `billing` scope). An agent acting for a member can read the balance, never raise
what it may spend.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select

from auxen.billing.alerts import recent_alerts
from auxen.billing.ledger import month_start
from auxen.runtime import Runtime
from auxen.store.models import (
    CapScope,
    Instance,
    LedgerEntry,
    LedgerKind,
    SpendingCap,
)
from auxen.tools import audit
from auxen.tools.context import Caller
from auxen.tools.errors import InvalidArgument, NotFound
from auxen.tools.permissions import Permission
from auxen.tools.views import _iso, micros_to_usd

MAX_CAP_USD = Decimal(1_000_000)


def usd_to_micros(usd: Decimal) -> int:
    return int(usd * 1_000_000)


class CapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: CapScope = Field(
        description="instance: one instance's total; monthly: the workspace per calendar "
        "month (UTC); max_burn: $/hour of all running instances together; client_monthly: "
        "one OAuth client (agent) per calendar month"
    )
    amount_usd: Decimal | None = Field(
        ge=0,
        le=MAX_CAP_USD,
        decimal_places=6,
        allow_inf_nan=False,
        description="The cap in dollars (dollars per hour for max_burn); null removes it",
    )
    instance_id: str | None = Field(default=None, max_length=32)
    client_id: str | None = Field(default=None, min_length=1, max_length=2000)


class CapView(BaseModel):
    scope: CapScope
    subject: str | None = Field(description="The instance or client id the cap is for")
    amount_micros: int
    amount_usd: str
    used_micros: int | None = Field(description="Spent or reserved against it so far")


class AlertView(BaseModel):
    kind: str
    instance_id: str | None
    message: str
    created_at: str | None


class BalanceView(BaseModel):
    object: Literal["balance"] = "balance"
    livemode: bool
    balance_micros: int = Field(description="Credits bought or granted, minus spend")
    balance_usd: str
    held_micros: int = Field(description="Reserved for work in progress")
    available_micros: int = Field(description="What new work can still reserve")
    available_usd: str
    spent_this_month_micros: int
    burn_rate_micros_per_hour: int = Field(description="$/h of running instances")
    caps: list[CapView]
    alerts: list[AlertView] = Field(description="Recent alerts, newest first")


async def get_balance(rt: Runtime, caller: Caller) -> BalanceView:
    caller.require(Permission.BALANCE_READ)
    ws, live = caller.workspace_id, caller.livemode
    balance = await rt.ledger.balance(ws, live)
    now = datetime.now(UTC)
    async with caller.scoped(rt.db) as session:
        rows = (
            await session.exec(select(SpendingCap).where(col(SpendingCap.livemode) == live))
        ).all()
    burn = await rt.ledger.burn_rate(ws, live)
    caps = []
    for cap in rows:
        used: int | None
        if cap.scope is CapScope.INSTANCE:
            used = await rt.ledger.committed(ws, live, instance_id=cap.subject)
        elif cap.scope is CapScope.MONTHLY:
            used = await rt.ledger.committed(ws, live, since=month_start(now))
        elif cap.scope is CapScope.CLIENT_MONTHLY:
            used = await rt.ledger.committed(
                ws, live, client_id=cap.subject, since=month_start(now)
            )
        else:
            used = burn
        caps.append(
            CapView(
                scope=cap.scope,
                subject=cap.subject or None,
                amount_micros=cap.amount_micros,
                amount_usd=micros_to_usd(cap.amount_micros),
                used_micros=used,
            )
        )
    alerts = await recent_alerts(rt.db, ws, live)
    return BalanceView(
        livemode=live,
        balance_micros=balance.balance_micros,
        balance_usd=micros_to_usd(balance.balance_micros),
        held_micros=balance.held_micros,
        available_micros=balance.available_micros,
        available_usd=micros_to_usd(balance.available_micros),
        spent_this_month_micros=await rt.ledger.committed(ws, live, since=month_start(now)),
        burn_rate_micros_per_hour=burn,
        caps=caps,
        alerts=[
            AlertView(
                kind=a.kind,
                instance_id=a.instance_id,
                message=a.message,
                created_at=_iso(a.created_at),
            )
            for a in alerts
        ],
    )


async def set_spending_cap(rt: Runtime, caller: Caller, req: CapRequest) -> BalanceView:
    caller.require(Permission.CAPS)
    subject = ""
    if req.scope is CapScope.INSTANCE:
        if not req.instance_id:
            raise InvalidArgument("an instance cap needs instance_id", param="instance_id")
        async with caller.scoped(rt.db) as session:
            found = await session.get(Instance, req.instance_id)
        if found is None or found.livemode != caller.livemode:
            raise NotFound(f"no instance {req.instance_id} in this workspace", param="instance_id")
        subject = req.instance_id
    elif req.scope is CapScope.CLIENT_MONTHLY:
        if not req.client_id:
            raise InvalidArgument("an agent's budget needs client_id", param="client_id")
        subject = req.client_id
    elif req.instance_id or req.client_id:
        field = "instance_id" if req.instance_id else "client_id"
        raise InvalidArgument(f"{field} does not apply to a {req.scope.value} cap", param=field)
    amount = None if req.amount_usd is None else usd_to_micros(req.amount_usd)
    if amount is None:
        await remove_cap(rt, caller, req.scope, subject=subject)
    else:
        await set_cap(rt, caller, req.scope, amount, subject=subject)
    await audit.record_for(
        rt, caller, "cap.change", target_type="cap", target_id=req.scope.value,
        detail={"subject": subject[:120] or None, "amount_micros": amount,
                "livemode": caller.livemode},
    )  # fmt: skip
    return await get_balance(rt, caller)


async def set_cap(
    rt: Runtime, caller: Caller, scope: CapScope, amount_micros: int, *, subject: str = ""
) -> None:
    async with caller.scoped(rt.db) as session:
        existing = (
            await session.exec(
                select(SpendingCap).where(
                    col(SpendingCap.livemode) == caller.livemode,
                    col(SpendingCap.scope) == scope,
                    col(SpendingCap.subject) == subject,
                )
            )
        ).first()
        cap = existing or SpendingCap(
            workspace_id=caller.workspace_id,
            livemode=caller.livemode,
            scope=scope,
            subject=subject,
            amount_micros=amount_micros,
        )
        cap.amount_micros = amount_micros
        cap.updated_at = datetime.now(UTC)
        session.add(cap)
        await session.commit()


async def remove_cap(rt: Runtime, caller: Caller, scope: CapScope, *, subject: str = "") -> None:
    async with caller.scoped(rt.db) as session:
        await session.exec(
            sa.delete(SpendingCap).where(
                col(SpendingCap.livemode) == caller.livemode,
                col(SpendingCap.scope) == scope,
                col(SpendingCap.subject) == subject,
            )
        )
        await session.commit()


# What the ledger listing shows: money in and out, not the reservations and releases
# that only move money between "available" and "held".
STATEMENT_KINDS = (LedgerKind.PURCHASE, LedgerKind.GRANT, LedgerKind.CHARGE, LedgerKind.REVERSAL)


async def list_ledger(
    rt: Runtime, caller: Caller, *, limit: int = 50, offset: int = 0
) -> tuple[list[LedgerEntry], int]:
    """One page of the workspace's statement (purchases, grants, charges, reversals),
    newest first, and how many entries it has in all. Admins and the owner."""
    caller.require(Permission.LEDGER_READ)
    if not 1 <= limit <= 500 or offset < 0:
        raise InvalidArgument("limit must be 1-500 and offset not negative", param="limit")
    kinds = [k.value for k in STATEMENT_KINDS]
    async with caller.scoped(rt.db) as session:
        where = (col(LedgerEntry.livemode) == caller.livemode, col(LedgerEntry.kind).in_(kinds))
        total = (
            await session.exec(select(sa.func.count()).select_from(LedgerEntry).where(*where))
        ).one()
        rows = (
            await session.exec(
                select(LedgerEntry)
                .where(*where)
                .order_by(col(LedgerEntry.created_at).desc(), col(LedgerEntry.id))
                .limit(limit)
                .offset(offset)
            )
        ).all()
    return list(rows), int(total)
