"""Outbound HTTP to URLs that someone other than this server chose: Client ID Metadata
Documents (an agent's URL), webhooks (a workspace's URLs) and an OpenAI-compatible
embeddings server (the operator's URL). One guard for all of them, so none of them can
be turned against the deployment's own network (server-side request forgery).

What the guard admits, checked for every connection (so for every redirect too, although
the clients it makes follow none):
- `https` to port 443; plain `http` to port 80 only where a policy allows it (the
  operator's own embeddings URL);
- a host whose every resolved address is public (`public_address`): not private,
  loopback, link-local, CGNAT (100.64/10), multicast, reserved, documentation or
  benchmarking ranges, nor IPv6 forms that carry an IPv4 address inside them (NAT64
  64:ff9b::/96 and 64:ff9b:1::/48, IPv4-mapped and IPv4-compatible, Teredo 2001::/32),
  site-local fec0::/10, and 6to4 2002::/16 whose embedded IPv4 is not public;
- addresses inside networks an operator lists explicitly (`AUXEN_OUTBOUND_ALLOW_NETWORKS`
  for tenants' URLs, `AUXEN_KB_EMBEDDINGS_ALLOW_NETWORKS` for the embeddings server),
  on any port and over plain http: the operator's own receivers.

The connection goes to the address that was checked: the transport resolves the host
once, checks every answer, and hands the pool's network backend that one address (a
context variable per request), so a second DNS answer between the check and the connect
(DNS rebinding) is never used. TLS is still verified for the host name. Proxies from
the environment are ignored (they would connect elsewhere).

Why not a library: none fits httpx2, the HTTP client Auxen uses. `advocate` wraps
`requests` and was last released in 2020; `safehttpx` only GETs, takes any one public
answer of a mixed DNS reply, falls back to a public DNS-over-HTTPS resolver, and relies on
`ipaddress` flags; `httpx-secure` patches the private internals of `httpx` 0.28 and
`httpcore` 1.x; `drawbridge`, `ssrfguard` and `egressweave` are months-old 0.x releases,
also for `httpx`. Python's `ipaddress` is used for parsing and for its registry of
special ranges (`is_global`), with the ranges it gets wrong handled here: it calls
NAT64, 6to4, IPv4-compatible, site-local and multicast addresses global (Python 3.11),
and 192.0.0.0/24 and 192.88.99.0/24 too.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpcore2
import httpx2
from httpcore2._backends.auto import AutoBackend

from auxen.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
RESOLVE_TIMEOUT_S = 10.0

_V6 = ipaddress.IPv6Network
_V4 = ipaddress.IPv4Network
# IPv6 forms that reach an IPv4 address (or a private relay): never public here, whatever
# the IPv4 inside them (a NAT64 gateway or a Teredo relay would carry us anywhere).
_V6_WRAPPERS = (
    _V6("64:ff9b::/96"),  # NAT64, well-known prefix (RFC 6052)
    _V6("64:ff9b:1::/48"),  # NAT64, local-use prefix (RFC 8215)
    _V6("::ffff:0:0/96"),  # IPv4-mapped
    _V6("::/96"),  # IPv4-compatible (deprecated), and :: and ::1
    _V6("2001::/32"),  # Teredo
)
_SIX_TO_FOUR = _V6("2002::/16")  # 6to4: public only if the IPv4 inside is
_V6_NOT_PUBLIC = (
    _V6("fec0::/10"),  # site-local (deprecated, still routed inside some networks)
    _V6("ff00::/8"),  # multicast
    _V6("3fff::/20"),  # documentation (RFC 9637)
    _V6("5f00::/16"),  # SRv6 SIDs (RFC 9602)
)
_V6_GLOBAL_UNICAST = _V6("2000::/3")
_V4_NOT_PUBLIC = (
    _V4("0.0.0.0/8"),
    _V4("100.64.0.0/10"),  # CGNAT
    _V4("192.0.0.0/24"),  # IETF protocol assignments
    _V4("192.88.99.0/24"),  # 6to4 relay anycast (deprecated)
    _V4("198.18.0.0/15"),  # benchmarking
    _V4("224.0.0.0/4"),  # multicast
    _V4("240.0.0.0/4"),  # reserved, and the broadcast address
)


def public_address(address: str | IPAddress) -> bool:
    """Whether `address` is a public unicast address this server may connect to for
    someone else."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None or any(ip in net for net in (*_V6_WRAPPERS, *_V6_NOT_PUBLIC)):
            return False
        if ip in _SIX_TO_FOUR:
            return public_address(ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF))
        return ip in _V6_GLOBAL_UNICAST and ip.is_global
    return ip.is_global and not any(ip in net for net in _V4_NOT_PUBLIC)


def parse_networks(text: str, setting: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs (or single addresses) of a setting; ValueError names it."""
    networks: list[IPNetwork] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{setting}: {part!r} is not an address or a network") from None
    return tuple(networks)


class OutboundRefused(httpx2.RequestError):
    """The guard will not connect there: the message says why (never a secret)."""


@dataclass(frozen=True)
class OutboundPolicy:
    """`allow_networks`: non-public networks an operator allows (any port, plain http);
    `allow_http`: plain http to public addresses on port 80 (operator-set URLs only)."""

    allow_networks: tuple[IPNetwork, ...] = ()
    allow_http: bool = False

    def allowed(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self.allow_networks)

    def check_address(self, ip: IPAddress, scheme: str, port: int) -> None:
        """Refuse `ip` unless it is public (on the scheme's standard port) or inside a
        network the operator allowed."""
        if self.allowed(ip):
            return
        if not public_address(ip):
            raise OutboundRefused(f"{ip} is not a public address")
        if scheme == "https" and port == 443:
            return
        if scheme == "http" and self.allow_http and port == 80:
            return
        raise OutboundRefused(f"{scheme} to port {port} of a public address is not allowed")

    def check_url(self, url: str) -> httpx2.URL:
        """What can be known of a URL before resolving it, for refusing a bad one when it
        is registered: the scheme, no credentials, a host; for an IP-literal host the
        address itself; otherwise port 443 and https unless the operator allowed networks
        (plain http then only to an allowed network named by its address). Every
        connection is checked again, address by address."""
        parsed = _basic(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        literal = _literal(parsed.host)
        if literal is not None:
            self.check_address(literal, parsed.scheme, port)
        elif parsed.scheme == "http" and not self.allow_http:
            raise OutboundRefused("the URL must be https")
        elif port not in (443, 80) and not self.allow_networks:
            raise OutboundRefused("the URL's port must be 443")
        return parsed


def _basic(url: str) -> httpx2.URL:
    try:
        parsed = httpx2.URL(url)
    except httpx2.InvalidURL:
        raise OutboundRefused("not a valid URL") from None
    if parsed.scheme not in ("https", "http") or not parsed.host:
        raise OutboundRefused("the URL must be https (with a host)")
    if parsed.userinfo:
        raise OutboundRefused("the URL must not carry credentials")
    return parsed


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class _Pin:
    host: str
    port: int
    address: str


_PIN: contextvars.ContextVar[_Pin | None] = contextvars.ContextVar("auxen_outbound_pin")


def _host_key(host: str) -> str:
    return host.strip("[]").lower()


class _PinnedBackend(httpcore2.AsyncNetworkBackend):
    """Connects only to the address the transport admitted for this request's host."""

    def __init__(self, inner: httpcore2.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or AutoBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        pin = _PIN.get(None)
        if pin is None or (_host_key(pin.host), pin.port) != (_host_key(host), port):
            raise httpcore2.ConnectError(f"{host}:{port} was not admitted by the outbound guard")
        return await self._inner.connect_tcp(
            pin.address, port, timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("the outbound guard connects over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx2.AsyncHTTPTransport):
    """httpx2's transport, with every request admitted by `policy` first and its
    connection pinned to the address that was checked."""

    def __init__(
        self,
        policy: OutboundPolicy,
        resolver: Resolver | None = None,
        network: httpcore2.AsyncNetworkBackend | None = None,
    ) -> None:
        """`resolver` and `network` (what actually opens sockets) default to the
        system's; tests hand in their own to watch what the guard does."""
        super().__init__(trust_env=False)
        self.policy = policy
        self.resolver = resolver or system_resolver
        # The same pool httpx2 builds, on a backend that connects only to admitted
        # addresses (httpx2 has no public hook for the network backend).
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),
            network_backend=_PinnedBackend(network),
        )

    async def admit(self, url: httpx2.URL) -> str:
        """The one address to connect to for `url`, after checking every address its
        host resolves to (one unacceptable answer refuses the whole name)."""
        _basic(str(url))
        port = url.port or (443 if url.scheme == "https" else 80)
        literal = _literal(url.host)
        if literal is not None:
            self.policy.check_address(literal, url.scheme, port)
            return str(literal)
        try:
            answers = await asyncio.wait_for(self.resolver(url.host, port), RESOLVE_TIMEOUT_S)
        except (OSError, TimeoutError):
            raise OutboundRefused(f"{url.host} does not resolve") from None
        if not answers:
            raise OutboundRefused(f"{url.host} does not resolve")
        addresses: list[IPAddress] = []
        for answer in answers:
            ip = _literal(answer)  # a scoped one ("fe80::1%eth0") is never public
            if ip is None:
                raise OutboundRefused(f"{url.host} resolves to an unusable address")
            self.policy.check_address(ip, url.scheme, port)
            addresses.append(ip)
        return str(addresses[0])

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            address = await self.admit(request.url)
        except OutboundRefused as exc:
            raise OutboundRefused(str(exc), request=request) from None
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        token = _PIN.set(_Pin(request.url.host, port, address))
        try:
            return await super().handle_async_request(request)
        finally:
            _PIN.reset(token)


def guarded_client(
    policy: OutboundPolicy,
    *,
    resolver: Resolver | None = None,
    network: httpcore2.AsyncNetworkBackend | None = None,
    timeout: httpx2.Timeout | float = 10.0,
    headers: dict[str, str] | None = None,
) -> httpx2.AsyncClient:
    """An httpx2 client for URLs someone else chose: admitted by `policy`, pinned to the
    checked address, following no redirects, ignoring proxy settings."""
    return httpx2.AsyncClient(
        transport=GuardedTransport(policy, resolver, network),
        follow_redirects=False,
        trust_env=False,
        timeout=timeout,
        headers=headers,
    )


def tenant_policy(settings: Settings) -> OutboundPolicy:
    """For URLs tenants and agents give (webhooks, Client ID Metadata Documents)."""
    return OutboundPolicy(
        parse_networks(settings.outbound_allow_networks, "AUXEN_OUTBOUND_ALLOW_NETWORKS")
    )


def embeddings_policy(settings: Settings) -> OutboundPolicy:
    """For the operator's embeddings server: plain http on port 80 allowed too."""
    return OutboundPolicy(
        parse_networks(settings.kb_embeddings_allow_networks, "AUXEN_KB_EMBEDDINGS_ALLOW_NETWORKS"),
        allow_http=True,
    )
