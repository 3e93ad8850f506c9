"""Signed webhooks: where they may point, how they are signed, how one is sent.

Deliveries are signed like Stripe's: `Auxen-Signature: t=<unix time>,v1=<hex
HMAC-SHA256 of "<t>.<body>" under the endpoint's secret>`. A receiver checks the HMAC
and that `t` is recent (replays of old deliveries fail), and uses `Auxen-Event-Id` to
ignore a retry of an event it already handled.

Where they may point is the outbound guard's rule (`auxen.outbound`), the same in every
environment: https to a public address on port 443, or an address in a network the
operator allowed (`AUXEN_OUTBOUND_ALLOW_NETWORKS`). A URL is checked when it is set and
every delivery connects only to an address checked for it then.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx2

from auxen.outbound import OutboundPolicy, OutboundRefused
from auxen.tools.errors import InvalidArgument

TIMEOUT_S = 10.0


def signature(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def check_webhook_url(url: str, *, policy: OutboundPolicy) -> str:
    """An https URL to a public host (or an address the operator allowed), without
    credentials or a fragment."""
    parts = urlsplit(url) if isinstance(url, str) else None
    try:
        if parts is None or len(url) > 2000 or parts.fragment:
            raise OutboundRefused("too long, or with a fragment")
        policy.check_url(url)
    except (OutboundRefused, ValueError) as exc:
        raise InvalidArgument(
            f"url must be an https URL to a public host, without credentials ({exc}); "
            "plain http or private addresses only where the operator allowed them",
            param="url",
        ) from None
    return url


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
) -> Sent:
    """One signed POST through `http`, a client of the outbound guard
    (`auxen.outbound.guarded_client`); any 2xx is delivered. Never raises for the
    receiver's faults."""
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
    except OutboundRefused as exc:
        return Sent(False, None, f"not sent: {exc}")
    except httpx2.HTTPError as exc:
        return Sent(False, None, f"{type(exc).__name__}: could not reach the endpoint")
    if 200 <= reply.status_code < 300:
        return Sent(True, reply.status_code, None)
    return Sent(False, reply.status_code, f"the endpoint answered HTTP {reply.status_code}")
