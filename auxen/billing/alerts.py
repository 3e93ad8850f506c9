"""Alerts the workspace's owners must see: an instance stopped because a cap or the balance
was reached. Each is a row (listed by `get_balance` and on the account page), a warning in
the server log, and, when the owner set one, a signed POST to the workspace's alert
webhook. Never any content: ids, kinds, amounts.

Webhook deliveries are signed like Stripe's: `Auxen-Signature: t=<unix time>,v1=<hex
HMAC-SHA256 of "<t>.<body>" under the workspace's webhook secret>`; they are tried three
times with growing waits, off the path that raised the alert, and a failing receiver
never breaks anything else.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx2
from sqlmodel import col, select

from auxen.auth.oauth.cimd import public_address
from auxen.auth.sealing import unseal
from auxen.store.db import Database
from auxen.store.models import Alert, Workspace
from auxen.tools.errors import InvalidArgument

log = logging.getLogger(__name__)
DELIVERY_WAITS_S = (0.0, 1.0, 4.0)


def signature(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


class Alerts:
    def __init__(self, db: Database, master_key: bytes, *, production: bool) -> None:
        self.db = db
        self.master_key = master_key
        self.production = production
        self._deliveries: set[asyncio.Task[None]] = set()

    async def raise_alert(
        self,
        workspace_id: str,
        livemode: bool,
        *,
        kind: str,
        message: str,
        instance_id: str | None = None,
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
            await session.commit()
            workspace = await session.get(Workspace, workspace_id)
        log.warning("alert for %s: %s", workspace_id, kind)
        if workspace is not None and workspace.alert_webhook_url and workspace.alert_webhook_sealed:
            secret = unseal(self.master_key, workspace_id, workspace.alert_webhook_sealed)
            task = asyncio.create_task(self._deliver(workspace.alert_webhook_url, secret, alert))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)
        return alert

    async def _deliver(self, url: str, secret: str, alert: Alert) -> None:
        if self.production and not await _reaches_only_public_addresses(url):
            log.warning("alert webhook of %s points inside; not sent", alert.workspace_id)
            return
        body = json.dumps(
            {
                "type": "alert",
                "workspace_id": alert.workspace_id,
                "livemode": alert.livemode,
                "alert": {
                    "id": alert.id,
                    "kind": alert.kind,
                    "instance_id": alert.instance_id,
                    "message": alert.message,
                    "created_at": alert.created_at.isoformat().replace("+00:00", "Z"),
                },
            }
        ).encode()
        async with httpx2.AsyncClient(timeout=10.0, follow_redirects=False) as http:
            for wait in DELIVERY_WAITS_S:
                await asyncio.sleep(wait)
                try:
                    reply = await http.post(
                        url,
                        content=body,
                        headers={
                            "Content-Type": "application/json",
                            "Auxen-Signature": signature(secret, body),
                        },
                    )
                    if reply.status_code < 300:
                        return
                except httpx2.HTTPError:
                    pass
        log.warning("could not deliver alert %s to the workspace's webhook", alert.id)

    async def delivered(self) -> None:
        """Wait for deliveries in flight (shutdown, tests)."""
        await asyncio.gather(*self._deliveries, return_exceptions=True)


def check_webhook_url(url: str, *, production: bool) -> str:
    """An https URL (or, outside production, http on loopback) without credentials."""
    parts = urlsplit(url)
    loopback = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
    if (
        len(url) > 2000
        or not parts.hostname
        or parts.username is not None
        or not (parts.scheme == "https" or (loopback and not production))
    ):
        raise InvalidArgument(
            "url must be an https URL without credentials (http on loopback only in development)",
            param="url",
        )
    return url


async def _reaches_only_public_addresses(url: str) -> bool:
    """The webhook's host resolves to public addresses only (no requests into the
    deployment's own network). A rebinding between this check and the POST is possible;
    the body carries ids and kinds only."""
    parts = urlsplit(url)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443)
    except OSError:
        return False
    return bool(infos) and all(public_address(str(info[4][0])) for info in infos)


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
