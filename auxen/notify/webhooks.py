"""Signed webhooks: where they may point, how they are signed, how one is sent.

Deliveries are signed like Stripe's: `Auxen-Signature: t=<unix time>,v1=<hex
HMAC-SHA256 of "<t>.<body>" under the endpoint's secret>`. A receiver checks the HMAC
and that `t` is recent (replays of old deliveries fail), and uses `Auxen-Event-Id` to
ignore a retry of an event it already handled.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx2

from auxen.auth.oauth.cimd import public_address
from auxen.tools.errors import InvalidArgument

TIMEOUT_S = 10.0


def signature(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


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


async def reaches_only_public_addresses(url: str) -> bool:
    """The webhook's host resolves to public addresses only (no requests into the
    deployment's own network). A rebinding between this check and the POST is possible;
    the body carries ids and kinds only."""
    parts = urlsplit(url)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443)
    except OSError:
        return False
    return bool(infos) and all(public_address(str(info[4][0])) for info in infos)


@dataclass(frozen=True)
class Sent:
    ok: bool
    status_code: int | None
    error: str | None


async def post_signed(
    http: httpx2.AsyncClient,
    url: str,
    secret: str,
    body: bytes,
    *,
    event_id: str,
    production: bool,
) -> Sent:
    """One signed POST; any 2xx is delivered. Never raises for the receiver's faults."""
    if production and not await reaches_only_public_addresses(url):
        return Sent(False, None, "the URL resolves to a private address; not sent")
    try:
        reply = await http.post(
            url,
            content=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": "Auxen-Webhooks/1",
                "Auxen-Event-Id": event_id,
                "Auxen-Signature": signature(secret, body),
            },
            timeout=TIMEOUT_S,
        )
    except httpx2.HTTPError as exc:
        return Sent(False, None, f"{type(exc).__name__}: could not reach the endpoint")
    if 200 <= reply.status_code < 300:
        return Sent(True, reply.status_code, None)
    return Sent(False, reply.status_code, f"the endpoint answered HTTP {reply.status_code}")
