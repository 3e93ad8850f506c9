"""Bounds on what a client may register about itself (RFC 7591 section 2), whether it
registers through `/register` or describes itself in a Client ID Metadata Document.

Everything a registration stores is bounded here, before the SDK parses it: the whole
request (16 KB), the number of entries in each list, and the length of every string.
Redirect URIs also obey `redirect_uris` (https or loopback http, no userinfo, no
fragment). A field the SDK does not know is never stored, so it needs no bound. An
error names the field, so a client developer knows what to change.
"""

from __future__ import annotations

import json
from typing import Any

from auxen.auth.oauth.redirect_uris import RedirectUriError, check_redirect_uri
from auxen.jsonparse import parse_json
from auxen.tools.errors import InvalidArgument

MAX_REQUEST_BYTES = 16 * 1024
MAX_REDIRECT_URIS = 10
MAX_NAME_CHARS = 200
MAX_URI_CHARS = 2000
MAX_LIST_ITEMS = 10
MAX_ITEM_CHARS = 320
MAX_JWKS_BYTES = 4096

# field -> most characters of a plain string field
STRING_FIELDS = {
    "client_name": MAX_NAME_CHARS,
    "client_uri": MAX_URI_CHARS,
    "logo_uri": MAX_URI_CHARS,
    "tos_uri": MAX_URI_CHARS,
    "policy_uri": MAX_URI_CHARS,
    "jwks_uri": MAX_URI_CHARS,
    "scope": 500,
    "software_id": MAX_NAME_CHARS,
    "software_version": MAX_NAME_CHARS,
    "token_endpoint_auth_method": 64,
    "application_type": 64,
}
# field -> (most entries, most characters of each)
LIST_FIELDS = {
    "contacts": (MAX_LIST_ITEMS, MAX_ITEM_CHARS),
    "grant_types": (MAX_LIST_ITEMS, 100),
    "response_types": (MAX_LIST_ITEMS, 100),
}


class ClientMetadataError(ValueError):
    """Registered metadata out of bounds; `field` names what to change, and `error` is
    the RFC 7591 error code."""

    def __init__(self, field: str, message: str, error: str = "invalid_client_metadata") -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.error = error


def parse_registration(body: bytes) -> dict[str, Any]:
    """The JSON object of a registration request, or ClientMetadataError."""
    if len(body) > MAX_REQUEST_BYTES:
        raise ClientMetadataError(
            "request", f"client metadata is at most {MAX_REQUEST_BYTES} bytes of JSON"
        )
    try:
        document = parse_json(body)
    except InvalidArgument as exc:
        if exc.param is None:
            raise ClientMetadataError("request", "client metadata must be a JSON object") from None
        raise ClientMetadataError(exc.param, exc.message) from None
    if not isinstance(document, dict):
        raise ClientMetadataError("request", "client metadata must be a JSON object")
    return document


def check_client_metadata(document: dict[str, Any]) -> None:
    """Refuse (ClientMetadataError) metadata with any field out of bounds."""
    uris = document.get("redirect_uris")
    if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
        raise ClientMetadataError(
            "redirect_uris", "redirect_uris must be a non-empty list of URIs",
            "invalid_redirect_uri",
        )  # fmt: skip
    if len(uris) > MAX_REDIRECT_URIS:
        raise ClientMetadataError(
            "redirect_uris", f"at most {MAX_REDIRECT_URIS} redirect_uris", "invalid_redirect_uri"
        )
    for uri in uris:
        try:
            check_redirect_uri(uri)
        except RedirectUriError as exc:
            raise ClientMetadataError(
                "redirect_uris", f"redirect_uris: {exc}", "invalid_redirect_uri"
            ) from None
    for field, most in STRING_FIELDS.items():
        value = document.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ClientMetadataError(field, f"{field} must be a string")
        if len(value) > most:
            raise ClientMetadataError(field, f"{field} is at most {most} characters")
        if any(c < " " or c == "\x7f" for c in value):
            raise ClientMetadataError(field, f"{field} may not contain control characters")
    for field, (most_items, most_chars) in LIST_FIELDS.items():
        value = document.get(field)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ClientMetadataError(field, f"{field} must be a list of strings")
        if len(value) > most_items:
            raise ClientMetadataError(field, f"{field} has at most {most_items} entries")
        if any(len(v) > most_chars for v in value):
            raise ClientMetadataError(field, f"each of {field} is at most {most_chars} characters")
    jwks = document.get("jwks")
    if jwks is not None and len(json.dumps(jwks)) > MAX_JWKS_BYTES:
        raise ClientMetadataError("jwks", f"jwks is at most {MAX_JWKS_BYTES} bytes of JSON")
