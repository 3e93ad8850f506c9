"""Client ID Metadata Documents: a client whose `client_id` is an https URL is described
by the JSON document at that URL, fetched here with guards against server-side request
forgery.

The guards: https only, no credentials or fragment in the URL; the host name is resolved
once and every address must be public (no private, loopback, link-local, reserved or
multicast ranges); the connection goes to that resolved address (so a second DNS answer
cannot redirect it inward), with TLS verified for the host name; no redirects; 5 KB and
10 s at most; results cached for five minutes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from urllib.parse import urlsplit

from mcp.shared.auth import OAuthClientInformationFull
from pydantic import ValidationError

from auxen.auth.oauth.client_metadata import (
    ClientMetadataError,
    check_client_metadata,
    parse_registration,
)

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


def public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


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
    def __init__(self) -> None:
        self._cache: dict[str, tuple[OAuthClientInformationFull | None, float]] = {}

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
        except (DocumentError, OSError, TimeoutError, ssl.SSLError, ValueError):
            client = None
        if len(self._cache) > 1000:
            self._cache.clear()
        self._cache[url] = (client, now + CACHE_S)
        return client

    async def _fetch(self, url: str) -> bytes:
        host, port, path = check_url(url)
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [str(info[4][0]) for info in infos]
        if not addresses or not all(public_address(a) for a in addresses):
            raise DocumentError(f"{host} resolves to a non-public address")
        reader, writer = await asyncio.open_connection(
            addresses[0], port, ssl=ssl.create_default_context(), server_hostname=host
        )
        try:
            writer.write(
                f"GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n"
                "User-Agent: auxen-cimd\r\n\r\n".encode()
            )
            await writer.drain()
            raw = b""
            while chunk := await reader.read(4096):
                raw += chunk
                if len(raw) > MAX_BYTES + 8192:  # the body's limit plus room for headers
                    raise DocumentError("the client_id document is larger than 5 KB")
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1] if b" " in head else b""
        if status != b"200":
            raise DocumentError(f"the client_id document answered {status.decode()!r}")
        if len(body) > MAX_BYTES:
            raise DocumentError("the client_id document is larger than 5 KB")
        return body
