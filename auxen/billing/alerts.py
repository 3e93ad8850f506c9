"""Alerts the workspace's owners must see: an instance stopped because a cap or the balance
was reached. Each is a row (listed by `get_balance` and on the account page), a warning in
the server log, and a `spend_limit_reached` notification queued in the same transaction
(email to the owners, and the workspace's webhooks, among them the alert webhook set with
`PUT /v1/alerts/webhook`). Never any content: ids, kinds, amounts.

Signing and the URL rules live in `auxen.notify.webhooks` (re-exported here).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlmodel import col, select

from auxen.notify import Event, EventType, notify
from auxen.notify.webhooks import check_webhook_url, signature
from auxen.store.db import Database
from auxen.store.models import Alert

__all__ = ["Alerts", "check_webhook_url", "recent_alerts", "signature"]

log = logging.getLogger(__name__)


class Alerts:
    def __init__(self, db: Database, master_key: bytes, *, production: bool) -> None:
        self.db = db
        self.master_key = master_key
        self.production = production

    async def raise_alert(
        self,
        workspace_id: str,
        livemode: bool,
        *,
        kind: str,
        message: str,
        instance_id: str | None = None,
        limit: str | None = None,
    ) -> Alert:
        alert = Alert(
            workspace_id=workspace_id,
            livemode=livemode,
            kind=kind,
            instance_id=instance_id,
            message=message[:500],
            created_at=datetime.now(UTC),
        )
        async with self.db.system() as session:
            session.add(alert)
            await notify(
                session,
                workspace_id,
                Event(
                    EventType.SPEND_LIMIT_REACHED,
                    {
                        "alert_id": alert.id,
                        "kind": kind,
                        "instance_id": instance_id,
                        "limit": limit,
                        "message": alert.message,
                    },
                    livemode=livemode,
                ),
            )
            await session.commit()
        log.warning("alert for %s: %s", workspace_id, kind)
        return alert


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
