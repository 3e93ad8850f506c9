"""The public security surface of a running server: security headers on every kind of
response (pages, REST, MCP, static files, errors), HSTS only over https, security.txt
(RFC 9116) and the disclosure policy, and /status with component health and the
incidents operators post with `auxen incident`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx2
import pytest

from tests.servers import REPO, AuxenServer, sqlite_server

ALWAYS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}
STRICT = "default-src 'none'; frame-ancestors 'none'"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuxenServer]:
    with sqlite_server(tmp_path_factory.mktemp("surface")) as srv:
        yield srv


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuxenServer]:
    """Deployed behind TLS at a public https URL, with a vector store it cannot reach."""
    root = tmp_path_factory.mktemp("surface-public")
    srv = AuxenServer(
        root / "data",
        f"sqlite:///{root / 'auxen.db'}",
        {
            "AUXEN_PUBLIC_URL": "https://auxen.example.com",
            "AUXEN_ALLOWED_HOSTS": "127.0.0.1:*",
            "AUXEN_SECURITY_CONTACT": "disclosure@example.org",
            "AUXEN_KB_URI": "/proc/auxen-no-such-dir/kb",
            "AUXEN_STATUS_CHECK_TIMEOUT_S": "1",
        },
    ).start()
    try:
        yield srv
    finally:
        srv.stop_clean()


def responses(server: AuxenServer, **headers: str) -> dict[str, httpx2.Response]:
    with httpx2.Client(base_url=server.url, headers=headers, follow_redirects=False) as http:
        return {
            "page": http.get("/login"),
            "json": http.get("/v1/instances"),
            "mcp": http.post("/mcp", json={}),
            "static": http.get("/static/auxen.css"),
            "not found": http.get("/no/such/path"),
            "status": http.get("/status.json"),
            "security.txt": http.get("/.well-known/security.txt"),
        }


def test_every_response_carries_the_security_headers(server: AuxenServer) -> None:
    for name, reply in responses(server).items():
        for header, value in ALWAYS.items():
            assert reply.headers.get(header) == value, (name, header, reply.headers)
        csp = reply.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp, (name, csp)
        assert "strict-transport-security" not in reply.headers, name  # plain http
    pages = responses(server)
    # A page keeps its own policy (its stylesheet, its forms); everything else loads nothing.
    assert pages["page"].headers["content-security-policy"].startswith("default-src 'self'")
    assert pages["json"].headers["content-security-policy"].startswith(STRICT)
    assert pages["static"].headers["content-security-policy"].startswith(STRICT)


def test_hsts_only_when_the_request_came_over_https(
    server: AuxenServer, public: AuxenServer
) -> None:
    # A trusted proxy (loopback, by default) says the browser used https.
    for name, reply in responses(server, **{"X-Forwarded-Proto": "https"}).items():
        assert reply.headers.get("strict-transport-security", "").startswith("max-age="), name
    # A public https URL means TLS in front of every request.
    for name, reply in responses(public).items():
        assert "includeSubDomains" in reply.headers["strict-transport-security"], name


def test_an_untrusted_proxy_cannot_turn_on_hsts(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("untrusted")
    srv = AuxenServer(
        root / "data", f"sqlite:///{root / 'auxen.db'}", {"AUXEN_FORWARDED_ALLOW_IPS": "192.0.2.9"}
    ).start()
    try:
        reply = httpx2.get(f"{srv.url}/login", headers={"X-Forwarded-Proto": "https"})
        assert reply.status_code == 200 and "strict-transport-security" not in reply.headers
    finally:
        srv.stop_clean()


def _fields(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.strip().splitlines())


def test_security_txt_follows_rfc_9116(server: AuxenServer, public: AuxenServer) -> None:
    reply = httpx2.get(f"{public.url}/.well-known/security.txt")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    fields = _fields(reply.text)
    assert fields["Contact"] == "mailto:disclosure@example.org"
    expires = datetime.fromisoformat(fields["Expires"].replace("Z", "+00:00"))
    assert datetime.now(UTC) < expires < datetime.now(UTC) + timedelta(days=365)
    assert fields["Canonical"] == "https://auxen.example.com/.well-known/security.txt"
    assert fields["Policy"] == "https://auxen.example.com/security"
    assert fields["Preferred-Languages"] == "en"
    # Without a configured contact: security@ the public host.
    local = _fields(httpx2.get(f"{server.url}/.well-known/security.txt").text)
    assert local["Contact"] == "mailto:security@127.0.0.1"


def test_the_policy_page_and_security_md_promise_the_same(public: AuxenServer) -> None:
    page = httpx2.get(f"{public.url}/security")
    assert page.status_code == 200 and "disclosure@example.org" in page.text
    policy = (REPO / "SECURITY.md").read_text()
    for promise in ("3 business days", "10 business days", "90 days", "good faith"):
        assert promise in page.text and promise in policy, promise


def test_status_reports_components_and_incidents_posted_by_operators(server: AuxenServer) -> None:
    report = httpx2.get(f"{server.url}/status.json").json()
    assert report["status"] == "operational", report
    names = [c["name"] for c in report["components"]]
    assert names == ["database", "vector store", "provider: local"]
    assert all(c["status"] == "operational" for c in report["components"])

    posted = server.cli(
        "incident", "post", "--title", "Slow provisioning", "--severity", "major",
        "--message", "Pods take longer than usual to start.",
    )  # fmt: skip
    found = re.search(r"incident (inc_\w+) investigating", posted.stdout)
    assert found, posted.stdout + posted.stderr
    incident = found.group(1)
    report = httpx2.get(f"{server.url}/status.json").json()
    assert report["status"] == "degraded"
    assert report["incidents"][0]["id"] == incident
    assert report["incidents"][0]["severity"] == "major"
    server.cli("incident", "update", incident, "--status", "monitoring", "--message", "Fixed.")
    server.cli("incident", "resolve", incident, "--message", "All pods start normally.")
    again = server.cli("incident", "resolve", incident, check=False)
    assert again.returncode == 1 and "already resolved" in again.stderr
    bad = server.cli("incident", "post", "--title", "x", "--message", "y", "--severity", "huge",
                     check=False)  # fmt: skip
    assert bad.returncode == 1 and "severity" in bad.stderr
    report = httpx2.get(f"{server.url}/status.json").json()
    assert report["status"] == "operational"
    shown = report["incidents"][0]
    assert shown["status"] == "resolved" and shown["resolved_at"]
    assert [u["status"] for u in shown["updates"]] == ["resolved", "monitoring", "investigating"]
    listed = server.cli("incident", "list", "--json")
    assert incident in listed.stdout
    page = httpx2.get(f"{server.url}/status")
    assert page.status_code == 200 and "Slow provisioning" in page.text
    assert "All pods start normally." in page.text


def test_status_names_a_failing_component_without_its_error(public: AuxenServer) -> None:
    report = httpx2.get(f"{public.url}/status.json").json()
    states = {c["name"]: c for c in report["components"]}
    assert states["database"]["status"] == "operational"
    assert states["vector store"]["status"] == "down"
    assert states["vector store"]["detail"] in ("unreachable", "timeout")
    assert report["status"] == "degraded"
    assert "/proc/auxen-no-such-dir" not in str(report)
