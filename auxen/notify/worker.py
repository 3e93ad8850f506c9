"""The delivery worker: turns queued notifications into deliveries and sends them.

Each pass (every `AUXEN_NOTIFY_POLL_S`, in every server process):
1. Fan-out. A notification not yet fanned out gets one delivery row per email address
   and per webhook endpoint (of the notification's mode) its workspace's preferences
   name; the rows and the notification's `fanned_out_at` are written in one
   transaction, conditional on it still being unset, so a notification is fanned out
   once whichever process gets there.
2. Claim. A due, pending delivery is taken by a conditional UPDATE that sets this
   process's lease (`lease_owner`, `lease_expires_at`) only if no live lease is held;
   on PostgreSQL and SQLite alike, exactly one process wins each claim.
3. Send, then record the outcome and the attempt in one transaction that applies only
   while this process still holds the lease. A delivery marked delivered is never sent
   again; one whose process died mid-send is claimed again once its lease lapses.
   Failures wait `AUXEN_NOTIFY_BACKOFF_S * 2^(attempt-1)` and give up (state failed)
   after `AUXEN_NOTIFY_MAX_ATTEMPTS`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosmtplib
import sqlalchemy as sa
from sqlmodel import col, select

from auxen.auth.sealing import UnsealError, unseal
from auxen.config import Settings
from auxen.notify.events import (
    DEFAULTS,
    PERSONAL_EVENTS,
    SECURITY_EVENTS,
    EventType,
    email_text,
    subject,
)
from auxen.notify.mail import email_enabled, send_email
from auxen.notify.webhooks import Sent, post_signed
from auxen.outbound import guarded_client, tenant_policy
from auxen.periodic import Periodic
from auxen.store.db import Database
from auxen.store.models import (
    Membership,
    Notification,
    NotificationAttempt,
    NotificationDelivery,
    NotificationPreference,
    User,
    WebhookEndpoint,
    as_utc,
)

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
BATCH = 50


def webhook_body(notification: Notification) -> bytes:
    """What a webhook receives: the event's ids and kinds, never content. Alert events
    also carry the `alert` object the alert webhook has always sent."""
    data = json.loads(notification.data_json)
    body: dict[str, Any] = {
        "id": notification.id,
        "object": "event",
        "type": notification.event,
        "workspace_id": notification.workspace_id,
        "livemode": notification.livemode,
        "created_at": as_utc(notification.created_at).isoformat().replace("+00:00", "Z"),
        "data": data,
    }
    if notification.event == EventType.SPEND_LIMIT_REACHED and "alert_id" in data:
        body["type"] = "alert"
        body["event_type"] = notification.event
        body["alert"] = {
            "id": data["alert_id"],
            "kind": data.get("kind"),
            "instance_id": data.get("instance_id"),
            "message": data.get("message"),
            "created_at": body["created_at"],
        }
    return json.dumps(body).encode()


class NotificationWorker:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.owner = f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(4)}"
        # Every delivery through the outbound guard: public addresses (or those the
        # operator allowed), pinned to the address checked, no redirects.
        self._http = guarded_client(tenant_policy(settings))
        self._loop = Periodic("notifications", self.run_once, settings.notify_poll_s)

    # -- fan-out ---------------------------------------------------------------------

    async def _fan_out(self) -> None:
        async with self.db.system() as session:
            waiting = (
                await session.exec(
                    select(Notification)
                    .where(col(Notification.fanned_out_at).is_(None))
                    .order_by(col(Notification.created_at))
                    .limit(BATCH)
                )
            ).all()
        for notification in waiting:
            targets = await self._targets(notification)
            now = datetime.now(UTC)
            async with self.db.system() as session:
                claimed = await session.exec(
                    sa.update(Notification)
                    .where(col(Notification.id) == notification.id)
                    .where(col(Notification.fanned_out_at).is_(None))
                    .values(fanned_out_at=now)
                )
                if claimed.rowcount != 1:
                    await session.rollback()
                    continue  # another process fanned it out
                for channel, target in targets:
                    session.add(
                        NotificationDelivery(
                            workspace_id=notification.workspace_id,
                            notification_id=notification.id,
                            event=notification.event,
                            channel=channel,
                            target=target,
                            state=PENDING,
                            next_attempt_at=now,
                            created_at=now,
                        )
                    )
                await session.commit()

    async def _targets(self, notification: Notification) -> list[tuple[str, str]]:
        """(channel, target) pairs: email addresses by role, and webhook endpoints."""
        ws, event = notification.workspace_id, notification.event
        async with self.db.system() as session:
            pref = (
                await session.exec(
                    select(NotificationPreference).where(
                        col(NotificationPreference.workspace_id) == ws,
                        col(NotificationPreference.event) == event,
                    )
                )
            ).first()
            roles = set(pref.email_roles.split(",") if pref else DEFAULTS.email_roles) - {""}
            if event in SECURITY_EVENTS:
                roles.add("owner")
            emails: list[str] = []
            if email_enabled(self.settings):
                people = (
                    select(User.email)
                    .join(Membership, col(Membership.user_id) == col(User.id))
                    .where(col(Membership.workspace_id) == ws)
                    .where(col(Membership.role).in_(sorted(roles)))
                )
                if self.settings.requires_email_proof:
                    # An address nobody has proven may be someone else's: mail it nothing
                    # but its confirmation link (see notify.account_mail).
                    people = people.where(col(User.email_verified_at).is_not(None))
                emails = list((await session.exec(people)).all())
                if notification.user_id and event in PERSONAL_EVENTS:
                    person = await session.get(User, notification.user_id)
                    if person is not None and not (
                        self.settings.requires_email_proof and person.email_verified_at is None
                    ):
                        emails.append(person.email)
            endpoints: list[str] = []
            if pref is None or pref.webhook:
                # Endpoints are per mode: test-mode events reach test-mode endpoints only.
                rows = (
                    await session.exec(
                        select(WebhookEndpoint).where(
                            col(WebhookEndpoint.workspace_id) == ws,
                            col(WebhookEndpoint.livemode) == notification.livemode,
                        )
                    )
                ).all()
                endpoints = [e.id for e in rows if e.events == "*" or event in e.events.split(",")]
        return [("email", e) for e in dict.fromkeys(emails)] + [("webhook", e) for e in endpoints]

    # -- claim, send, record -----------------------------------------------------------

    async def _claim(self) -> list[NotificationDelivery]:
        now = datetime.now(UTC)
        free = sa.or_(
            col(NotificationDelivery.lease_expires_at).is_(None),
            col(NotificationDelivery.lease_expires_at) < now,
        )
        async with self.db.system() as session:
            due = (
                await session.exec(
                    select(NotificationDelivery.id)
                    .where(col(NotificationDelivery.state) == PENDING)
                    .where(col(NotificationDelivery.next_attempt_at) <= now)
                    .where(free)
                    .order_by(col(NotificationDelivery.next_attempt_at))
                    .limit(BATCH)
                )
            ).all()
        claimed: list[NotificationDelivery] = []
        lease = now + timedelta(seconds=self.settings.notify_lease_s)
        for delivery_id in due:
            async with self.db.system() as session:
                won = await session.exec(
                    sa.update(NotificationDelivery)
                    .where(col(NotificationDelivery.id) == delivery_id)
                    .where(col(NotificationDelivery.state) == PENDING)
                    .where(free)
                    .values(
                        lease_owner=self.owner,
                        lease_expires_at=lease,
                        attempts=NotificationDelivery.attempts + 1,
                    )
                )
                await session.commit()
                if won.rowcount == 1:
                    row = await session.get(NotificationDelivery, delivery_id)
                    if row is not None:
                        claimed.append(row)
        return claimed

    async def _send(self, delivery: NotificationDelivery) -> Sent:
        async with self.db.system() as session:
            notification = await session.get(Notification, delivery.notification_id)
            endpoint = (
                await session.get(WebhookEndpoint, delivery.target)
                if delivery.channel == "webhook"
                else None
            )
        if notification is None:
            return Sent(False, None, "the notification is gone")
        if delivery.channel == "email":
            data = json.loads(notification.data_json)
            try:
                await send_email(
                    self.settings,
                    delivery.target,
                    subject(notification.event, data),
                    email_text(
                        notification.event, notification.workspace_id, data, self.settings.base_url
                    ),
                )
            except (aiosmtplib.SMTPException, OSError) as exc:
                return Sent(False, None, f"{type(exc).__name__}: {str(exc)[:300]}")
            return Sent(True, None, None)
        if endpoint is None:
            return Sent(False, None, "the webhook endpoint was deleted")
        try:
            secret = unseal(
                self.settings.master_key_bytes, endpoint.workspace_id, endpoint.secret_sealed
            )
        except UnsealError:
            return Sent(False, None, "the endpoint's secret cannot be opened")
        return await post_signed(
            self._http,
            endpoint.url,
            secret,
            webhook_body(notification),
            event_id=notification.id,
        )

    async def _deliver(self, delivery: NotificationDelivery) -> None:
        started = time.perf_counter()
        try:
            sent = await self._send(delivery)
        except Exception as exc:  # a channel's bug never stops the worker
            log.exception("delivery %s failed unexpectedly", delivery.id)
            sent = Sent(False, None, f"internal error: {type(exc).__name__}")
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        now = datetime.now(UTC)
        gone = sent.error in ("the notification is gone", "the webhook endpoint was deleted")
        values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
        if sent.ok:
            values.update(state=DELIVERED, delivered_at=now, last_error=None)
        elif gone or delivery.attempts >= self.settings.notify_max_attempts:
            values.update(state=FAILED, last_error=sent.error)
        else:
            wait = self.settings.notify_backoff_s * 2 ** (delivery.attempts - 1)
            values.update(next_attempt_at=now + timedelta(seconds=wait), last_error=sent.error)
        async with self.db.system() as session:
            recorded = await session.exec(
                sa.update(NotificationDelivery)
                .where(col(NotificationDelivery.id) == delivery.id)
                .where(col(NotificationDelivery.lease_owner) == self.owner)
                .values(**values)
            )
            if recorded.rowcount != 1:
                await session.rollback()
                log.warning("lost the lease on delivery %s while sending", delivery.id)
                return
            session.add(
                NotificationAttempt(
                    workspace_id=delivery.workspace_id,
                    delivery_id=delivery.id,
                    attempt=delivery.attempts,
                    ok=sent.ok,
                    status_code=sent.status_code,
                    error=sent.error,
                    duration_ms=duration_ms,
                    created_at=now,
                )
            )
            await session.commit()
        if not sent.ok:
            log.warning(
                "%s delivery %s (attempt %d) failed: %s",
                delivery.channel, delivery.id, delivery.attempts, sent.error,
            )  # fmt: skip

    # -- running ---------------------------------------------------------------------

    async def run_once(self) -> int:
        """One pass; the number of deliveries attempted."""
        await self._fan_out()
        claimed = await self._claim()
        await asyncio.gather(*(self._deliver(d) for d in claimed))
        return len(claimed)

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.stop()
        await self._http.aclose()
