"""The outbound guard (issue 16, item 9): one check for every fetch to a URL someone
else chose (webhooks, Client ID Metadata Documents, the embeddings server).

Every range is tested; the DNS-rebinding case uses real sockets on two loopback
addresses and a resolver that answers one address first and another after; the
"public, then private" case watches the socket layer instead of opening anything (no
test here connects anywhere but loopback). Webhooks are tested through a real server:
outside production too, loopback receivers need the operator's explicit setting.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore2
import httpx2
import pytest

from auxen.auth.oauth.cimd import DocumentFetcher
from auxen.config import Settings
from auxen.kb.embeddings import OpenAIEmbeddings
from auxen.outbound import (
    OutboundPolicy,
    OutboundRefused,
    embeddings_policy,
    guarded_client,
    parse_networks,
    public_address,
)
from auxen.outbound import _PinnedBackend as _PinnedBackend
from auxen.tools.errors import Unavailable
from tests.servers import AuxenServer, free_port, sqlite_server

# Every kind of address the guard must refuse, with why.
NOT_PUBLIC = {
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "100.64.0.1": "CGNAT",
    "100.127.255.254": "CGNAT",
    "169.254.169.254": "link-local (cloud metadata)",
    "0.0.0.0": "this network",
    "0.1.2.3": "this network",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "broadcast",
    "192.0.0.8": "IETF protocol assignments",
    "192.0.2.1": "documentation",
    "198.51.100.1": "documentation",
    "203.0.113.1": "documentation",
    "198.18.0.1": "benchmarking",
    "192.88.99.1": "6to4 relay anycast",
    "::": "unspecified",
    "::1": "loopback",
    "::a00:1": "IPv4-compatible (10.0.0.1)",
    "::808:808": "IPv4-compatible, even of a public IPv4",
    "::ffff:127.0.0.1": "IPv4-mapped loopback",
    "::ffff:10.0.0.1": "IPv4-mapped private",
    "::ffff:8.8.8.8": "IPv4-mapped, even of a public IPv4",
    "64:ff9b::7f00:1": "NAT64 of 127.0.0.1",
    "64:ff9b::a9fe:a9fe": "NAT64 of 169.254.169.254",
    "64:ff9b::808:808": "NAT64, whatever the IPv4",
    "64:ff9b:1::a00:1": "local-use NAT64",
    "2002:7f00:1::1": "6to4 of 127.0.0.1",
    "2002:a00:1::1": "6to4 of 10.0.0.1",
    "2002:a9fe:a9fe::1": "6to4 of 169.254.169.254",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2": "Teredo",
    "fec0::1": "site-local",
    "fe80::1": "link-local",
    "fc00::1": "unique local",
    "fd12:3456::1": "unique local",
    "ff02::1": "multicast",
    "ff0e::1": "global-scope multicast",
    "2001:db8::1": "documentation",
    "3fff::1": "documentation (RFC 9637)",
    "100::1": "discard-only",
    "2001:10::1": "ORCHID",
    "5f00::1": "SRv6",
    "4000::1": "outside global unicast",
    "not-an-address": "not an address",
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001::1",
          "2002:808:808::1"]  # fmt: skip


@pytest.mark.parametrize("address", sorted(NOT_PUBLIC), ids=lambda a: f"{a} {NOT_PUBLIC[a]}")
def test_every_non_public_range_is_refused(address: str) -> None:
    assert not public_address(address)
    if address != "not-an-address":
        with pytest.raises(OutboundRefused):
            OutboundPolicy().check_address(_ip(address), "https", 443)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert public_address(address)
    OutboundPolicy().check_address(_ip(address), "https", 443)


def _ip(address: str) -> Any:
    return ipaddress.ip_address(address)


def test_ports_schemes_and_urls() -> None:
    strict = OutboundPolicy()
    for refused in (
        "https://example.com:8443/hook",  # only 443
        "http://example.com/hook",  # only https
        "https://user:pw@example.com/hook",  # no credentials
        "ftp://example.com/hook",
        "https://127.0.0.1/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[64:ff9b::a9fe:a9fe]/latest/meta-data",
        "https://100.64.0.1/hook",
    ):
        with pytest.raises(OutboundRefused):
            strict.check_url(refused)
    assert strict.check_url("https://hooks.example.com/services/x").host == "hooks.example.com"
    with pytest.raises(OutboundRefused):
        strict.check_address(_ip("8.8.8.8"), "https", 8443)
    with pytest.raises(OutboundRefused):
        strict.check_address(_ip("8.8.8.8"), "http", 80)
    OutboundPolicy(allow_http=True).check_address(_ip("8.8.8.8"), "http", 80)
    local = OutboundPolicy(parse_networks("127.0.0.1/32", "T"))
    local.check_url("http://127.0.0.1:8080/hook")  # the operator's own receiver
    local.check_address(_ip("127.0.0.1"), "http", 1)
    for refused in ("http://127.0.0.2:8080/hook", "http://localhost:8080/hook"):
        with pytest.raises(OutboundRefused):
            local.check_url(refused)
    with pytest.raises(ValueError, match="T: 'nope'"):
        parse_networks("10.0.0.0/8, nope", "T")


# -- real sockets on loopback -----------------------------------------------------------


class Receiver:
    """An HTTP server on one loopback address that keeps the paths it was asked for, and
    answers `redirect_to` with a 302 when set."""

    def __init__(self, host: str, port: int, redirect_to: str | None = None) -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.paths.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if redirect_to:
                    self.send_response(302)
                    self.send_header("Location", redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                texts = json.loads(body).get("input", []) if body else []
                out = json.dumps(
                    {
                        "data": [
                            {"index": i, "embedding": [1.0, 0.0, 0.0]} for i in range(len(texts))
                        ]
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def two_receivers() -> Iterator[tuple[Receiver, Receiver, int]]:
    """One receiver on 127.0.0.1 and one on 127.0.0.2, on the same port."""
    port = free_port()
    first, second = Receiver("127.0.0.1", port), Receiver("127.0.0.2", port)
    try:
        yield first, second, port
    finally:
        first.stop()
        second.stop()


class Rebinding:
    """A resolver that answers `answers[0]` first and `answers[1]` ever after."""

    def __init__(self, *answers: str) -> None:
        self.answers = answers
        self.calls = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        return [self.answers[min(self.calls - 1, len(self.answers) - 1)]]


ONLY_FIRST = OutboundPolicy(parse_networks("127.0.0.1/32", "T"))


def test_the_connection_goes_to_the_address_that_was_checked(
    two_receivers: tuple[Receiver, Receiver, int],
) -> None:
    first, second, port = two_receivers
    resolver = Rebinding("127.0.0.1", "127.0.0.2")

    async def go() -> tuple[int, int, str]:
        async with guarded_client(ONLY_FIRST, resolver=resolver) as http:
            first_status = (await http.get(f"http://rebind.test:{port}/n1")).status_code
            resolved = resolver.calls
            try:
                await http.get(f"http://rebind.test:{port}/n2")
            except OutboundRefused as exc:
                return first_status, resolved, str(exc)
            return first_status, resolved, "sent"

    status, resolved, second_try = asyncio.run(go())
    # One answer per request, checked and then connected to: a check-then-connect
    # client would have asked twice and connected to 127.0.0.2 (not allowed).
    assert (status, resolved) == (200, 1) and first.paths == ["/n1"]
    # The name now answers the other address: checked again, refused, nothing sent.
    assert "127.0.0.2 is not a public address" in second_try
    assert second.paths == []


class Watching(httpcore2.AsyncNetworkBackend):
    """The socket layer, watched: records where it was asked to connect, opens nothing."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        self.asked.append((host, port))
        raise httpcore2.ConnectError("not opened in tests")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def test_a_name_that_answers_public_then_private_is_reached_at_the_public_address() -> None:
    resolver = Rebinding("93.184.216.34", "127.0.0.1")
    network = Watching()

    async def go() -> None:
        async with guarded_client(OutboundPolicy(), resolver=resolver, network=network) as http:
            await http.post("https://hooks.rebind.test/x", content=b"{}")

    with pytest.raises(httpx2.ConnectError):
        asyncio.run(go())
    assert network.asked == [("93.184.216.34", 443)] and resolver.calls == 1


def test_one_private_answer_refuses_the_whole_name() -> None:
    network = Watching()

    async def both(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.5"]

    async def go() -> None:
        async with guarded_client(OutboundPolicy(), resolver=both, network=network) as http:
            await http.get("https://mixed.rebind.test/")

    with pytest.raises(OutboundRefused, match=r"10\.0\.0\.5"):
        asyncio.run(go())
    assert network.asked == []


def test_redirects_are_not_followed_and_every_hop_is_checked(
    two_receivers: tuple[Receiver, Receiver, int],
) -> None:
    _, second, port = two_receivers
    bouncer_port = free_port()
    bouncer = Receiver("127.0.0.1", bouncer_port, redirect_to=f"http://127.0.0.2:{port}/inside")
    try:

        async def go() -> tuple[int, str]:
            async with guarded_client(ONLY_FIRST) as http:
                plain = await http.get(f"http://127.0.0.1:{bouncer_port}/hop")
                try:
                    await http.get(f"http://127.0.0.1:{bouncer_port}/hop", follow_redirects=True)
                except OutboundRefused as exc:
                    return plain.status_code, str(exc)
                return plain.status_code, "followed"

        status, followed = asyncio.run(go())
    finally:
        bouncer.stop()
    assert status == 302  # not followed
    assert "127.0.0.2 is not a public address" in followed  # and refused if asked to
    assert second.paths == []


def test_the_socket_layer_connects_only_where_the_transport_admitted() -> None:
    """No path around the check: the pinned socket layer refuses any host the transport
    did not admit for the request in hand."""
    network = Watching()
    pool = httpcore2.AsyncConnectionPool(network_backend=_PinnedBackend(network))

    async def go() -> None:
        async with pool:
            await pool.request("GET", "http://127.0.0.1:9/")

    with pytest.raises(httpcore2.ConnectError, match="not admitted"):
        asyncio.run(go())
    assert network.asked == []


@pytest.mark.parametrize("host", ["0x7f000001", "2130706433", "127.1"])
def test_other_spellings_of_loopback_are_refused_once_resolved(host: str) -> None:
    """The system resolver reads these as 127.0.0.1 (no DNS query leaves for them)."""
    network = Watching()

    async def go() -> None:
        async with guarded_client(OutboundPolicy(), network=network) as http:
            await http.get(f"https://{host}/hook")

    with pytest.raises(OutboundRefused, match=r"127\.0\.0\.1 is not a public address"):
        asyncio.run(go())
    assert network.asked == []


# -- where it is used ---------------------------------------------------------------


@pytest.mark.parametrize(
    "client_id",
    [
        "https://[64:ff9b::7f00:1]/client.json",
        "https://[64:ff9b::a9fe:a9fe]/client.json",
        "https://[2002:7f00:1::1]/client.json",
        "https://[::ffff:127.0.0.1]/client.json",
        "https://[::7f00:1]/client.json",
        "https://[fec0::1]/client.json",
        "https://100.64.0.1/client.json",
        "https://8.8.8.8:8443/client.json",  # a public address, but not port 443
    ],
)
def test_client_id_documents_go_through_the_guard(client_id: str) -> None:
    network = Watching()
    fetcher = DocumentFetcher(OutboundPolicy())
    fetcher._http = guarded_client(OutboundPolicy(), network=network)
    assert asyncio.run(fetcher.client(client_id)) is None
    assert network.asked == []  # refused before any socket


def test_the_embeddings_server_needs_the_operators_setting(tmp_path: Path) -> None:
    port = free_port()
    server = Receiver("127.0.0.1", port)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        refused = OpenAIEmbeddings(url, "m", "sk-embed", 8, embeddings_policy(Settings()))
        with pytest.raises(Unavailable, match="AUXEN_KB_EMBEDDINGS_ALLOW_NETWORKS"):
            asyncio.run(refused.embed(["a"]))
        assert server.paths == []
        allowed = OpenAIEmbeddings(
            url, "m", "sk-embed", 8,
            embeddings_policy(Settings(kb_embeddings_allow_networks="127.0.0.1/32")),
        )  # fmt: skip
        vectors = asyncio.run(allowed.embed(["a", "b"]))
        assert vectors.shape == (2, 3) and server.paths == ["/v1/embeddings"]
    finally:
        server.stop()


def test_webhooks_to_loopback_need_the_operators_setting_outside_production(
    tmp_path: Path,
) -> None:
    port = free_port()
    receiver = Receiver("127.0.0.1", port)
    try:
        with sqlite_server(tmp_path / "plain") as plain:
            key = plain.init_workspace("hooks-plain@example.com")
            with plain.client(key) as http:
                # Development, no setting: loopback is refused like any private address.
                for url in (f"http://127.0.0.1:{port}/hook", "https://[::1]/hook",
                            "https://10.0.0.8/hook", "https://localhost:8443/hook"):  # fmt: skip
                    refused = http.post("/v1/notifications/webhooks", json={"url": url})
                    assert refused.status_code == 400, (url, refused.text)
                    assert refused.json()["error"]["param"] == "url"
                # A name that resolves to loopback passes the form, not the delivery.
                made = http.post(
                    "/v1/notifications/webhooks", json={"url": "https://localhost/hook"}
                )
                assert made.status_code == 201, made.text
                http.post("/v1/keys", json={"name": "an event"}).raise_for_status()
                failed = _delivery(http)
                assert "not a public address" in (failed["last_error"] or ""), failed
        # The operator allows loopback explicitly: the receiver gets its delivery.
        root = tmp_path / "allowed"
        allowed = AuxenServer(
            root / "data", f"sqlite:///{root / 'auxen.db'}",
            {"AUXEN_OUTBOUND_ALLOW_NETWORKS": "127.0.0.1/32"},
        ).start()  # fmt: skip
        try:
            key = allowed.init_workspace("hooks-allowed@example.com")
            with allowed.client(key) as http:
                made = http.post(
                    "/v1/notifications/webhooks", json={"url": f"http://127.0.0.1:{port}/hook"}
                )
                assert made.status_code == 201, made.text
                http.post("/v1/keys", json={"name": "an event"}).raise_for_status()
                assert _delivery(http)["state"] == "delivered"
        finally:
            allowed.stop_clean()
        assert receiver.paths == ["/hook"]
    finally:
        receiver.stop()


def _delivery(http: httpx2.Client) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = http.get("/v1/notifications/deliveries").json()["data"]
        done = [d for d in rows if d["channel"] == "webhook" and d["attempts"]]
        if done:
            return dict(done[0])
        time.sleep(0.3)
    raise AssertionError("no webhook delivery was attempted")
