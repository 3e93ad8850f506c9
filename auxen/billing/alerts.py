"""Alerts the workspace's owners must see: an instance stopped because a cap or the balance
was reached, a cap nearly reached. Each is a row (listed by `get_balance` and the account
page) and a warning in the server log; never any content."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlmodel import col, select

from auxen.store.db import Database
from auxen.store.models import Alert

log = logging.getLogger(__name__)


async def raise_alert(
    db: Database,
    workspace_id: str,
    livemode: bool,
    *,
    kind: str,
    message: str,
    instance_id: str | None = None,
) -> None:
    async with db.system() as session:
        session.add(
            Alert(
                workspace_id=workspace_id,
                livemode=livemode,
                kind=kind,
                instance_id=instance_id,
                message=message[:500],
                created_at=datetime.now(UTC),
            )
        )
        await session.commit()
    log.warning("alert for %s: %s", workspace_id, kind)


async def recent_alerts(
    db: Database, workspace_id: str, livemode: bool, limit: int = 20
) -> list[Alert]:
    async with db.scoped(workspace_id) as session:
        rows = await session.exec(
            select(Alert)
            .where(col(Alert.livemode) == livemode)
            .order_by(col(Alert.created_at).desc())
            .limit(limit)
        )
        return list(rows.all())
