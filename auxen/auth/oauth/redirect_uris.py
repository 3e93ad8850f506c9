"""Where an authorization may send a person back: the rules every registered redirect URI
obeys (Dynamic Client Registration and Client ID Metadata Documents alike), and the host
the consent page shows for one.

A redirect URI is https with a host name, or http on a loopback address with any port
(RFC 8252 section 7.3: native apps listen on 127.0.0.1, [::1] or localhost). It never
carries userinfo (`https://trusted.example@attacker.example/cb` goes to
attacker.example, whatever it looks like), a fragment (RFC 6749 section 3.1.2), or
anything two URL parsers could read differently: only printable ASCII without spaces
or backslashes, a valid port, at most 2000 characters. The rules are applied again
whenever a stored client is loaded, so a registration made under older rules cannot
redirect anywhere today's would refuse.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

MAX_LENGTH = 2000
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class RedirectUriError(ValueError):
    """A redirect URI no client may register; the message says which rule it breaks."""


def check_redirect_uri(uri: str) -> None:
    """Refuse `uri` (RedirectUriError) unless it obeys every rule above."""
    shown = uri if len(uri) <= 100 else uri[:100] + "..."
    if len(uri) > MAX_LENGTH:
        raise RedirectUriError(f"redirect URIs are at most {MAX_LENGTH} characters")
    if not uri.isascii() or any(c <= " " or c in '\\"<>^`{|}\x7f' for c in uri):
        raise RedirectUriError(
            f"{shown!r} has characters a URI may not carry unencoded (spaces, controls, "
            "backslashes, non-ASCII): percent-encode them, and give host names in punycode"
        )
    if "#" in uri:
        raise RedirectUriError(f"{shown} has a fragment; redirect URIs may not")
    parts = urlsplit(uri)
    if "@" in parts.netloc:
        raise RedirectUriError(
            f"{shown} carries userinfo (a name before '@'); redirect URIs may not, since "
            "the part before '@' is not where the browser goes"
        )
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number in range)
    except ValueError:
        raise RedirectUriError(f"{shown} has an invalid port") from None
    host = parts.hostname or ""
    if parts.scheme == "https" and host and _valid_host(host):
        return
    if parts.scheme == "http" and host in LOOPBACK_HOSTS:
        return
    raise RedirectUriError(
        f"{shown} is not allowed: redirect URIs must be https, or http on 127.0.0.1, "
        "[::1] or localhost"
    )


def display_host(uri: str) -> str:
    """The host (and port, when one is given) a browser sent to `uri` reaches: what the
    consent page shows, never the userinfo or anything else before it."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port is not None else host


def _valid_host(host: str) -> bool:
    """A DNS name of letters, digits, hyphens and dots, or an IP literal."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(
        0 < len(label) <= 63
        and label.replace("-", "").isalnum()
        and not label.startswith("-")
        and not label.endswith("-")
        for label in labels
    )
