"""Notification settings and the delivery log: which events go where (email by role,
webhooks), the workspace's webhook endpoints (secrets shown once, stored sealed), and
every delivery with its attempts. Changing settings is for owners and admins.

Webhook endpoints and deliveries are per mode (test-mode events go to test-mode
endpoints); preferences are the workspace's, live mode only. A webhook URL is often a
capability (a chat app's incoming hook works for whoever knows it), so only owners and
admins see endpoint URLs and delivery targets in full; members see their host.
"""

from __future__ import annotations

import secrets
from typing import Literal
from urllib.parse import urlsplit

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select

from auxen.auth.sealing import seal
from auxen.notify.events import DEFAULTS, SECURITY_EVENTS, EventType
from auxen.notify.mail import email_enabled
from auxen.notify.webhooks import check_webhook_url
from auxen.outbound import tenant_policy
from auxen.runtime import Runtime
from auxen.store.models import (
    NotificationAttempt,
    NotificationDelivery,
    NotificationPreference,
    Role,
    WebhookEndpoint,
    utcnow,
)
from auxen.tools import audit
from auxen.tools.context import Caller
from auxen.tools.errors import InvalidArgument, NotFound
from auxen.tools.permissions import Permission
from auxen.tools.views import _iso

MAX_ENDPOINTS = 10
ALERT_EVENTS = (EventType.SPEND_LIMIT_REACHED,)


class EventPreference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: list[Role] = Field(description="Roles whose members get it by email")
    webhook: bool = Field(description="Sent to the workspace's webhook endpoints")


class EventSettings(EventPreference):
    security: bool = Field(description="Owners always get security events by email")


class PreferencesView(BaseModel):
    object: Literal["notification_preferences"] = "notification_preferences"
    email_enabled: bool = Field(description="False when the server has no SMTP host")
    events: dict[EventType, EventSettings]


class PreferencesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: dict[EventType, EventPreference] = Field(min_length=1)


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2000)
    events: list[EventType] | None = Field(
        default=None, min_length=1, description="Only these events; omit for all"
    )


class WebhookEndpointView(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    livemode: bool
    url: str | None = Field(description="The full URL: owners and admins only (null for members)")
    host: str = Field(description="The URL's host")
    events: list[str] = Field(description='The events it gets; ["*"] for all')
    alerts: bool = Field(description="The alert webhook (PUT /v1/alerts/webhook)")
    created_at: str | None
    secret: str | None = Field(
        default=None, description="Signs every delivery; shown once, when it is made"
    )


class AttemptView(BaseModel):
    attempt: int
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float
    created_at: str | None


class DeliveryView(BaseModel):
    id: str
    object: Literal["notification_delivery"] = "notification_delivery"
    notification_id: str
    event: str
    channel: str = Field(description="email or webhook")
    target: str = Field(
        description="The address, or the webhook endpoint's id (members: the address's domain only)"
    )
    host: str | None = Field(
        description="Where it went: the webhook endpoint's host, or the address's domain"
    )
    state: str = Field(description="pending, delivered or failed")
    attempts: list[AttemptView]
    next_attempt_at: str | None
    last_error: str | None
    created_at: str | None
    delivered_at: str | None


def _host(url: str) -> str:
    return urlsplit(url).hostname or ""


def _domain(address: str) -> str:
    return address.rpartition("@")[2]


def _endpoint_view(
    row: WebhookEndpoint, *, full: bool, secret: str | None = None
) -> WebhookEndpointView:
    return WebhookEndpointView(
        id=row.id,
        livemode=row.livemode,
        url=row.url if full else None,
        host=_host(row.url),
        events=row.events.split(","),
        alerts=row.alerts,
        created_at=_iso(row.created_at),
        secret=secret,
    )


async def get_preferences(rt: Runtime, caller: Caller) -> PreferencesView:
    caller.require(Permission.PREFERENCES_READ)
    async with caller.scoped(rt.db) as session:
        rows = {r.event: r for r in (await session.exec(select(NotificationPreference))).all()}
    events: dict[EventType, EventSettings] = {}
    for event in EventType:
        row = rows.get(event.value)
        roles = row.email_roles.split(",") if row else list(DEFAULTS.email_roles)
        events[event] = EventSettings(
            email=[Role(r) for r in roles if r],
            webhook=row.webhook if row else DEFAULTS.webhook,
            security=event in SECURITY_EVENTS,
        )
    return PreferencesView(email_enabled=email_enabled(rt.settings), events=events)


async def set_preferences(rt: Runtime, caller: Caller, req: PreferencesRequest) -> PreferencesView:
    """Set where the named events go (others keep theirs); owners and admins."""
    caller.require(Permission.PREFERENCES_MANAGE)
    async with caller.scoped(rt.db) as session:
        for event, pref in req.events.items():
            roles = ",".join(r.value for r in dict.fromkeys(pref.email))
            row = (
                await session.exec(
                    select(NotificationPreference).where(
                        col(NotificationPreference.event) == event.value
                    )
                )
            ).first() or NotificationPreference(workspace_id=caller.workspace_id, event=event)
            row.email_roles, row.webhook, row.updated_at = roles, pref.webhook, utcnow()
            session.add(row)
        await session.commit()
    return await get_preferences(rt, caller)


async def _add_endpoint(
    rt: Runtime, caller: Caller, url: str, events: list[str], *, alerts: bool
) -> WebhookEndpointView:
    url = check_webhook_url(url, policy=tenant_policy(rt.settings))
    secret = "whsec_" + secrets.token_urlsafe(32)
    row = WebhookEndpoint(
        workspace_id=caller.workspace_id,
        livemode=caller.livemode,
        url=url,
        secret_sealed=seal(rt.settings.master_key_bytes, caller.workspace_id, secret),
        events=",".join(events),
        alerts=alerts,
    )
    async with caller.scoped(rt.db) as session:
        if alerts:
            await session.exec(
                sa.delete(WebhookEndpoint).where(col(WebhookEndpoint.alerts).is_(True))
            )
        count = len((await session.exec(select(WebhookEndpoint.id))).all())
        if count >= MAX_ENDPOINTS:
            raise InvalidArgument(
                f"a workspace has at most {MAX_ENDPOINTS} webhook endpoints; delete one first",
                param="url",
            )
        session.add(row)
        await session.commit()
    return _endpoint_view(row, full=True, secret=secret)


async def create_webhook(rt: Runtime, caller: Caller, req: WebhookRequest) -> WebhookEndpointView:
    """A new webhook endpoint and its signing secret (shown once); owner only."""
    caller.require(Permission.NOTIFICATIONS_MANAGE)
    events = [e.value for e in dict.fromkeys(req.events)] if req.events else ["*"]
    return await _add_endpoint(rt, caller, req.url, events, alerts=False)


async def set_alert_webhook(rt: Runtime, caller: Caller, url: str | None) -> WebhookEndpointView:
    """The alert webhook of `PUT /v1/alerts/webhook`: the endpoint that gets
    spend_limit_reached, replaced (with a new secret) or removed (None); admins."""
    caller.require(Permission.ALERT_WEBHOOK)
    if url is None:
        async with caller.scoped(rt.db) as session:
            await session.exec(
                sa.delete(WebhookEndpoint).where(col(WebhookEndpoint.alerts).is_(True))
            )
            await session.commit()
        view = WebhookEndpointView(
            id="", livemode=caller.livemode, url="", host="", events=[], alerts=True,
            created_at=None,
        )  # fmt: skip
    else:
        view = await _add_endpoint(rt, caller, url, list(ALERT_EVENTS), alerts=True)
    await audit.record_for(
        rt, caller, "alert_webhook.change", target_type="workspace",
        target_id=caller.workspace_id, detail={"set": url is not None},
    )  # fmt: skip
    return view


async def list_webhooks(rt: Runtime, caller: Caller) -> list[WebhookEndpointView]:
    caller.require(Permission.NOTIFICATIONS_READ)
    async with caller.scoped(rt.db) as session:
        rows = (
            await session.exec(select(WebhookEndpoint).order_by(col(WebhookEndpoint.created_at)))
        ).all()
    full = caller.may(Permission.NOTIFICATIONS_MANAGE)
    return [_endpoint_view(r, full=full) for r in rows]


async def delete_webhook(rt: Runtime, caller: Caller, endpoint_id: str) -> WebhookEndpointView:
    caller.require(Permission.NOTIFICATIONS_MANAGE)
    async with caller.scoped(rt.db) as session:
        row = await session.get(WebhookEndpoint, endpoint_id)
        if row is None:
            raise NotFound(f"no webhook endpoint {endpoint_id}", param="id")
        await session.delete(row)
        await session.commit()
    return _endpoint_view(row, full=True)


async def list_deliveries(rt: Runtime, caller: Caller, *, limit: int = 50) -> list[DeliveryView]:
    """The delivery log, newest first, with every attempt."""
    caller.require(Permission.NOTIFICATIONS_READ)
    if not 1 <= limit <= 500:
        raise InvalidArgument("limit must be between 1 and 500", param="limit")
    async with caller.scoped(rt.db) as session:
        rows = (
            await session.exec(
                select(NotificationDelivery)
                .order_by(col(NotificationDelivery.created_at).desc())
                .limit(limit)
            )
        ).all()
        attempts = (
            await session.exec(
                select(NotificationAttempt)
                .where(col(NotificationAttempt.delivery_id).in_([r.id for r in rows]))
                .order_by(col(NotificationAttempt.attempt))
            )
        ).all()
        endpoint_ids = {r.target for r in rows if r.channel == "webhook"}
        urls = dict(
            (
                await session.exec(
                    select(WebhookEndpoint.id, WebhookEndpoint.url).where(
                        col(WebhookEndpoint.id).in_(sorted(endpoint_ids))
                    )
                )
            ).all()
        )
    full = caller.may(Permission.NOTIFICATIONS_MANAGE)
    shown = {r.id: _target_for(r, urls, full=full) for r in rows}

    def hidden(text: str | None, row: NotificationDelivery) -> str | None:
        # Members never see a full address or URL, even quoted in an error.
        if text is None or full:
            return text
        for secret in (row.target, urls.get(row.target)):
            if secret:
                text = text.replace(secret, shown[row.id][1] or "")
        return text

    by_delivery: dict[str, list[AttemptView]] = {}
    rows_by_id = {r.id: r for r in rows}
    for a in attempts:
        by_delivery.setdefault(a.delivery_id, []).append(
            AttemptView(
                attempt=a.attempt,
                ok=a.ok,
                status_code=a.status_code,
                error=hidden(a.error, rows_by_id[a.delivery_id]),
                duration_ms=a.duration_ms,
                created_at=_iso(a.created_at),
            )
        )
    return [
        DeliveryView(
            id=r.id,
            notification_id=r.notification_id,
            event=r.event,
            channel=r.channel,
            target=shown[r.id][0],
            host=shown[r.id][1],
            state=r.state,
            attempts=by_delivery.get(r.id, []),
            next_attempt_at=_iso(r.next_attempt_at) if r.state == "pending" else None,
            last_error=hidden(r.last_error, r),
            created_at=_iso(r.created_at),
            delivered_at=_iso(r.delivered_at),
        )
        for r in rows
    ]


def _target_for(
    row: NotificationDelivery, urls: dict[str, str], *, full: bool
) -> tuple[str, str | None]:
    """(target, host) of a delivery as the caller may see it."""
    if row.channel == "webhook":
        url = urls.get(row.target)
        return row.target, _host(url) if url else None
    domain = _domain(row.target)
    return (row.target if full else domain), domain
