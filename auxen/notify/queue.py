"""Raising a notification: one row in the `notification` table, nothing else. Delivery
happens later, in `NotificationWorker`, so a slow or failing channel never holds up (or
breaks) the request that caused it."""

from __future__ import annotations

import json
import logging

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auxen.notify.events import Event
from auxen.store.db import Database
from auxen.store.models import Membership, Notification

log = logging.getLogger(__name__)


def _row(workspace_id: str, event: Event) -> Notification:
    return Notification(
        workspace_id=workspace_id,
        livemode=event.livemode,
        event=event.type.value,
        data_json=json.dumps(dict(event.data)),
        user_id=event.user_id,
        dedupe_key=event.dedupe_key,
    )


async def notify(
    where: Database | AsyncSession, workspace_id: str, event: Event
) -> Notification | None:
    """Queue `event` for the workspace. Given a session, the row joins its transaction
    (the caller commits: the notification exists exactly when its cause does); given
    the database, it is committed at once, and a failure is logged, never raised. None
    when a notification with the same dedupe key was already queued."""
    row = _row(workspace_id, event)
    if isinstance(where, AsyncSession):
        where.add(row)
        return row
    try:
        async with where.system() as session:
            session.add(row)
            await session.commit()
    except IntegrityError:
        return None  # already told (dedupe_key)
    except Exception:
        log.exception("could not queue a %s notification for %s", event.type, workspace_id)
        return None
    return row


async def notify_user(db: Database, user_id: str, event: Event) -> None:
    """Queue a personal event in every workspace the person belongs to."""
    async with db.system() as session:
        workspaces = (
            await session.exec(
                select(Membership.workspace_id).where(col(Membership.user_id) == user_id)
            )
        ).all()
    for workspace_id in workspaces:
        await notify(db, workspace_id, Event(event.type, event.data, event.livemode, user_id))
