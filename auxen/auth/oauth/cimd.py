"""Client ID Metadata Documents: a client whose `client_id` is an https URL is described
by the JSON document at that URL, fetched here with guards against server-side request
forgery.

The guards: https only, no credentials or fragment in the URL; the fetch goes through
the outbound guard (`auxen.outbound`): every address the host resolves to must be public
(see `public_address` there for the ranges), port 443, and the connection goes to the
address that was checked (so a second DNS answer cannot redirect it inward), with TLS
verified for the host name; no redirects; 5 KB and 10 s at most; results cached for five
minutes.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import httpx2
from mcp.shared.auth import OAuthClientInformationFull
from pydantic import ValidationError

from auxen.auth.oauth.client_metadata import (
    ClientMetadataError,
    check_client_metadata,
    parse_registration,
)
from auxen.outbound import OutboundPolicy, guarded_client
from auxen.outbound import public_address as public_address  # the one classification

MAX_BYTES = 5 * 1024
TIMEOUT_S = 10.0
CACHE_S = 300.0


class DocumentError(Exception):
    """The URL or the document it points to is not an acceptable client."""


def is_document_url(client_id: str) -> bool:
    return client_id.startswith("https://")


def check_url(url: str) -> tuple[str, int, str]:
    """(host, port, path) of an acceptable document URL."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise DocumentError("client_id documents must be https URLs")
    if parts.username or parts.password or parts.fragment:
        raise DocumentError("client_id URLs carry no credentials or fragment")
    if parts.path in ("", "/"):
        raise DocumentError("client_id URLs must have a path")
    if len(url) > 2000:
        raise DocumentError("client_id URL too long")
    return (
        parts.hostname,
        parts.port or 443,
        parts.path + (f"?{parts.query}" if parts.query else ""),
    )


def client_from_document(url: str, raw: bytes) -> OAuthClientInformationFull:
    """The client a fetched document describes, held to the same rules and bounds as a
    registration (see `client_metadata` and `redirect_uris`)."""
    try:
        document = parse_registration(raw)
    except ClientMetadataError as exc:
        raise DocumentError(f"the client_id document: {exc.message}") from None
    if document.get("client_id") != url:
        raise DocumentError("the document's client_id must equal its URL")
    try:
        check_client_metadata(document)
    except ClientMetadataError as exc:
        raise DocumentError(exc.message) from None
    method = document.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise DocumentError("document clients must use token_endpoint_auth_method none")
    document.pop("client_secret", None)
    try:
        return OAuthClientInformationFull.model_validate(
            {**document, "token_endpoint_auth_method": "none"}
        )
    except ValidationError as exc:
        raise DocumentError(f"invalid client metadata: {exc.errors()[0]['msg']}") from None


class DocumentFetcher:
    def __init__(self, policy: OutboundPolicy | None = None) -> None:
        self._cache: dict[str, tuple[OAuthClientInformationFull | None, float]] = {}
        self._http = guarded_client(
            policy or OutboundPolicy(),
            timeout=TIMEOUT_S,
            # Identity only: the 5 KB bound is on the bytes received, never inflated ones.
            headers={
                "Accept": "application/json",
                "Accept-Encoding": "identity",
                "User-Agent": "auxen-cimd",
            },
        )

    async def client(self, url: str) -> OAuthClientInformationFull | None:
        """The client the document at `url` describes, or None if it is not acceptable."""
        now = time.monotonic()
        cached = self._cache.get(url)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            client: OAuthClientInformationFull | None = client_from_document(
                url, await asyncio.wait_for(self._fetch(url), TIMEOUT_S)
            )
        except (DocumentError, httpx2.HTTPError, OSError, TimeoutError, ValueError):
            client = None
        if len(self._cache) > 1000:
            self._cache.clear()
        self._cache[url] = (client, now + CACHE_S)
        return client

    async def _fetch(self, url: str) -> bytes:
        check_url(url)
        async with self._http.stream("GET", url) as reply:
            if reply.status_code != 200:
                raise DocumentError(f"the client_id document answered {reply.status_code}")
            body = b""
            async for chunk in reply.aiter_raw():
                body += chunk
                if len(body) > MAX_BYTES:
                    raise DocumentError("the client_id document is larger than 5 KB")
        return body

    async def close(self) -> None:
        await self._http.aclose()
