"""Test mode and live mode, kept apart in the data layer.

A session opened for a caller (`Caller.scoped`, which calls `mode_scoped` here) carries
its mode, and every SELECT, UPDATE and DELETE it runs sees only rows of that mode:

- tables with a `livemode` column (`MODE_TABLES`: keys, instances, knowledge bases, the
  ledger, reservations, caps, alerts, conversations, notifications, webhook endpoints)
  are filtered on it;
- tables whose rows belong to a row of such a table (`CHILD_TABLES`: usage, documents,
  attachments, conversation turns, deliveries and their attempts) are filtered through
  their parent;
- workspace-wide tables (`WORKSPACE_WIDE`: people, invitations, the audit log, provider
  credentials, notification preferences, OAuth grants) have no mode: the operations that
  touch them are live-mode only (`auxen.tools.permissions.PER_MODE`).

A flush that would write a row of the other mode is refused (`CrossModeWrite`, a bug,
never user input), as scoped sessions refuse another workspace's rows. `None` as the
mode (key management by a live-mode caller only) filters nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auxen.store.db import Database
from auxen.store.models import (
    Alert,
    ApiKey,
    AuditEvent,
    Conversation,
    ConversationTurn,
    Instance,
    Invite,
    KbAttachment,
    KbDocument,
    KnowledgeBase,
    LedgerEntry,
    Membership,
    Notification,
    NotificationAttempt,
    NotificationDelivery,
    NotificationPreference,
    OAuthConsent,
    OAuthToken,
    ProviderCredential,
    Reservation,
    SpendingCap,
    UsageRecord,
    WebhookEndpoint,
)

MODE_KEY = "livemode"

MODE_TABLES: tuple[Any, ...] = (
    ApiKey, Instance, KnowledgeBase, LedgerEntry, Reservation, SpendingCap, Alert,
    Conversation, Notification, WebhookEndpoint,
)  # fmt: skip
WORKSPACE_WIDE: tuple[Any, ...] = (
    Membership, Invite, AuditEvent, ProviderCredential, NotificationPreference, OAuthToken,
    OAuthConsent,
)  # fmt: skip


class CrossModeWrite(RuntimeError):
    """A mode-scoped session tried to write a row of the other mode (a bug)."""


def _child_criteria(mode: bool) -> list[Any]:
    """Rows with no mode of their own follow their parent's."""
    live_instances = select(Instance.id).where(col(Instance.livemode) == mode)
    live_kbs = select(KnowledgeBase.id).where(col(KnowledgeBase.livemode) == mode)
    conversations = select(Conversation.id).where(col(Conversation.livemode) == mode)
    notifications = select(Notification.id).where(col(Notification.livemode) == mode)
    deliveries = select(NotificationDelivery.id).where(
        col(NotificationDelivery.notification_id).in_(notifications)
    )
    return [
        with_loader_criteria(UsageRecord, col(UsageRecord.instance_id).in_(live_instances)),
        with_loader_criteria(KbDocument, col(KbDocument.knowledge_base_id).in_(live_kbs)),
        with_loader_criteria(KbAttachment, col(KbAttachment.instance_id).in_(live_instances)),
        with_loader_criteria(
            ConversationTurn, col(ConversationTurn.conversation_id).in_(conversations)
        ),
        with_loader_criteria(
            NotificationDelivery, col(NotificationDelivery.notification_id).in_(notifications)
        ),
        with_loader_criteria(
            NotificationAttempt, col(NotificationAttempt.delivery_id).in_(deliveries)
        ),
    ]


# Which parent each child table follows (also read by tests that check every tenant
# table is placed in exactly one of the three kinds).
CHILD_TABLES: dict[Any, Any] = {
    UsageRecord: Instance,
    KbDocument: KnowledgeBase,
    KbAttachment: Instance,
    ConversationTurn: Conversation,
    NotificationDelivery: Notification,
    NotificationAttempt: NotificationDelivery,
}


@event.listens_for(Session, "do_orm_execute")
def _scope_to_mode(state: ORMExecuteState) -> None:
    mode = state.session.info.get(MODE_KEY)
    if mode is None or not (state.is_select or state.is_update or state.is_delete):
        return
    state.statement = state.statement.options(
        *(with_loader_criteria(table, table.livemode == bool(mode)) for table in MODE_TABLES),
        *_child_criteria(bool(mode)),
    )


@event.listens_for(Session, "before_flush")
def _refuse_cross_mode_writes(session: Session, _ctx: Any, _instances: Any) -> None:
    mode = session.info.get(MODE_KEY)
    if mode is None:
        return
    for obj in (*session.new, *session.dirty):
        if isinstance(obj, MODE_TABLES) and obj.livemode is not mode:
            raise CrossModeWrite(
                f"{type(obj).__name__} of the other mode in a session scoped to "
                f"{'live' if mode else 'test'} mode"
            )


@asynccontextmanager
async def mode_scoped(
    db: Database, workspace_id: str, livemode: bool | None
) -> AsyncIterator[AsyncSession]:
    """A session scoped to `workspace_id` that sees and writes only rows of `livemode`
    (both modes when None)."""
    async with db.scoped(workspace_id) as session:
        if livemode is not None:
            session.sync_session.info[MODE_KEY] = livemode
        yield session
