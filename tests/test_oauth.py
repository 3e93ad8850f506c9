"""Remote agents with nothing but the server URL: the MCP SDK client's OAuthClientProvider
discovers, registers, sends its user through the real sign-in and consent pages (driven
by an HTTP client, as a browser would be) and calls tools with the token it gets. Then
the rules around it: PKCE, codes, redirect URIs, resource binding, refresh rotation,
revocation and scopes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from pydantic import AnyUrl

from auxen.store.db import Database
from auxen.store.models import OAuthClient
from tests.browsers import csrf_of, enrol_totp
from tests.ledger_checks import sql
from tests.mcp_clients import error_text, structured
from tests.servers import AuxenServer, free_port, sqlite_server

PASSWORD = "a passphrase for oauth tests"
REDIRECT = "http://127.0.0.1:53682/callback"


class Person:
    """A browser with a signed-in Auxen account."""

    def __init__(self, server: AuxenServer, email: str) -> None:
        self.server = server
        self.http = httpx2.Client(base_url=server.url, follow_redirects=False, timeout=30)
        form = self.http.get("/signup")
        done = self.http.post(
            "/signup",
            data={
                "csrf_token": csrf_of(form.text),
                "email": email,
                "password": PASSWORD,
                "workspace": f"{email}'s workspace",
            },
        )
        assert done.status_code == 303, done.text

    def consent(self, authorization_url: str, decision: str = "approve") -> dict[str, str]:
        """Follow /authorize to the consent page, answer it; the redirect's parameters."""
        step = self.http.get(authorization_url)
        assert step.status_code in (302, 303, 307), step.text
        page = self.http.get(step.headers["location"])
        assert page.status_code == 200, page.text
        assert "Allow" in page.text and "127.0.0.1:53682" in page.text
        request_token = re.search(r'name="request" value="([^"]+)"', page.text)
        workspace = re.search(r'<option value="([^"]+)"', page.text)
        assert request_token and workspace
        answer = self.http.post(
            "/oauth/consent",
            data={
                "csrf_token": csrf_of(page.text),
                "request": request_token.group(1),
                "workspace_id": workspace.group(1),
                "decision": decision,
            },
        )
        assert answer.status_code == 303, answer.text
        location = answer.headers["location"]
        assert location.startswith(REDIRECT)
        return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuxenServer]:
    with sqlite_server(tmp_path_factory.mktemp("oauth")) as srv:
        yield srv


def sdk_client(server: AuxenServer, person: Person, storage: MemoryStorage) -> Client:
    answers: list[dict[str, str]] = []

    async def redirect_handler(url: str) -> None:
        answers.append(await asyncio.to_thread(person.consent, url))

    async def callback_handler() -> AuthorizationCodeResult:
        answer = answers.pop()
        return AuthorizationCodeResult(
            code=answer["code"], state=answer.get("state"), iss=answer.get("iss")
        )

    auth = OAuthClientProvider(
        server_url=f"{server.url}/mcp",
        client_metadata=OAuthClientMetadata(
            client_name="Test Agent",
            redirect_uris=[AnyUrl(REDIRECT)],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    http = httpx2.AsyncClient(auth=auth, timeout=60)
    return Client(streamable_http_client(f"{server.url}/mcp", http_client=http))


async def test_an_agent_signs_in_with_nothing_but_the_url(server: AuxenServer) -> None:
    person = await asyncio.to_thread(Person, server, "agent-owner@example.com")
    storage = MemoryStorage()
    async with sdk_client(server, person, storage) as client:
        listed = structured(await client.call_tool("list_instances", {}))
        assert listed == {"instances": []}
        usage = structured(await client.call_tool("get_usage", {}))
        assert usage["requests"] == 0
    assert storage.tokens is not None and storage.tokens.access_token.startswith("auxo_")
    assert storage.client is not None and storage.client.client_id
    # A second connection reuses the stored token: no new sign-in.
    async with sdk_client(server, person, storage) as client:
        assert not (await client.call_tool("list_models", {})).is_error


def test_metadata_is_exact(server: AuxenServer) -> None:
    meta = httpx2.get(f"{server.url}/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == server.url  # no trailing slash
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "none" in meta["token_endpoint_auth_methods_supported"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    for path in (
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ):
        prm = httpx2.get(f"{server.url}{path}").json()
        assert prm["resource"] == f"{server.url}/mcp"
        assert prm["authorization_servers"] == [server.url]
        assert "offline_access" not in prm["scopes_supported"]


# -- the rules, one by one, with a hand-driven client ------------------------------------


class Flow:
    def __init__(self, server: AuxenServer, person: Person, scope: str | None = None) -> None:
        self.server = server
        self.person = person
        reply = httpx2.post(
            f"{server.url}/register",
            json={
                "client_name": "Hand Client",
                "redirect_uris": [REDIRECT],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
            },
        )
        assert reply.status_code == 201, reply.text
        self.client_id = reply.json()["client_id"]
        self.verifier = secrets.token_urlsafe(48)
        self.challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest())
            .decode()
            .rstrip("=")
        )
        self.scope = scope

    def authorize_url(self, **overrides: str) -> str:
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": REDIRECT,
            "code_challenge": self.challenge,
            "code_challenge_method": "S256",
            "state": "st-123",
            "resource": f"{self.server.url}/mcp",
            **({"scope": self.scope} if self.scope else {}),
            **overrides,
        }
        return str(httpx2.URL(f"{self.server.url}/authorize", params=params))

    def code(self) -> str:
        answer = self.person.consent(self.authorize_url())
        assert answer["state"] == "st-123" and answer["iss"] == self.server.url
        return answer["code"]

    def token(self, **form: str) -> httpx2.Response:
        return httpx2.post(f"{self.server.url}/token", data={"client_id": self.client_id, **form})

    def exchange(self, code: str, **overrides: str) -> httpx2.Response:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": self.verifier,
            "resource": f"{self.server.url}/mcp",
        }
        return self.token(**{**form, **overrides})


@pytest.fixture(scope="module")
def person(server: AuxenServer) -> Person:
    return Person(server, "rules@example.com")


async def mcp_call(server: AuxenServer, token: str, tool: str, args: dict[str, Any]) -> Any:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
    async with http, Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as c:
        return await c.call_tool(tool, args)


def test_code_exchange_needs_the_right_verifier_and_works_once(
    server: AuxenServer, person: Person
) -> None:
    flow = Flow(server, person)
    code = flow.code()
    wrong = flow.exchange(code, code_verifier=secrets.token_urlsafe(48))
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    good = flow.exchange(code)
    assert good.status_code == 200, good.text
    assert good.headers["cache-control"] == "no-store"
    tokens = good.json()
    assert (
        asyncio.run(mcp_call(server, tokens["access_token"], "list_instances", {})).is_error
        is False
    )
    # Replaying the spent code fails and revokes what it issued.
    replay = flow.exchange(code)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    revoked = httpx2.post(
        f"{server.url}/mcp",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        json={},
    )
    assert revoked.status_code == 401


def test_authorize_refuses_plain_or_missing_pkce_and_foreign_redirects(
    server: AuxenServer, person: Person
) -> None:
    flow = Flow(server, person)
    plain = person.http.get(flow.authorize_url(code_challenge_method="plain"))
    assert plain.status_code in (302, 303, 400)
    if plain.status_code != 400:
        query = parse_qs(urlsplit(plain.headers["location"]).query)
        assert query["error"] == ["invalid_request"] and query["iss"] == [server.url]
    elsewhere = person.http.get(flow.authorize_url(redirect_uri="https://evil.example/cb"))
    assert elsewhere.status_code == 400  # never redirected to an unregistered URI


def test_registration_refuses_non_https_redirects(server: AuxenServer) -> None:
    for uri in ("http://evil.example/cb", "javascript:alert(1)", "https://ok.example/cb#frag"):
        reply = httpx2.post(
            f"{server.url}/register",
            json={"redirect_uris": [uri], "token_endpoint_auth_method": "none"},
        )
        assert reply.status_code == 400, (uri, reply.text)
        assert reply.json()["error"] in ("invalid_redirect_uri", "invalid_client_metadata")
    for uri in ("http://localhost:1234/cb", "http://[::1]/cb", "https://app.example/cb"):
        ok = httpx2.post(
            f"{server.url}/register",
            json={"redirect_uris": [uri], "token_endpoint_auth_method": "none"},
        )
        assert ok.status_code == 201, (uri, ok.text)


def test_token_resource_must_match_the_code(server: AuxenServer, person: Person) -> None:
    flow = Flow(server, person)
    code = flow.code()
    other = flow.exchange(code, resource="https://other.example/mcp")
    assert other.status_code == 400 and other.json()["error"] == "invalid_target"
    assert flow.exchange(code).status_code == 200  # the code was not spent by the refusal


def test_refresh_tokens_rotate_and_a_reused_one_revokes_the_family(
    server: AuxenServer, person: Person
) -> None:
    flow = Flow(server, person, scope="instances:read")
    first = flow.exchange(flow.code()).json()
    second = flow.token(grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    reuse = flow.token(grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    # The whole family is gone, including the tokens the rotation issued.
    after = flow.token(grant_type="refresh_token", refresh_token=rotated["refresh_token"])
    assert after.status_code == 400
    with pytest.raises(Exception):  # noqa: B017 (401 from the transport)
        asyncio.run(mcp_call(server, rotated["access_token"], "list_instances", {}))


def test_revocation_ends_access(server: AuxenServer, person: Person) -> None:
    flow = Flow(server, person)
    tokens = flow.exchange(flow.code()).json()
    done = httpx2.post(
        f"{server.url}/revoke",
        data={"client_id": flow.client_id, "token": tokens["refresh_token"]},
    )
    assert done.status_code == 200, done.text
    with pytest.raises(Exception):  # noqa: B017
        asyncio.run(mcp_call(server, tokens["access_token"], "list_instances", {}))


def test_missing_scope_is_403_before_the_tool_runs(server: AuxenServer, person: Person) -> None:
    flow = Flow(server, person, scope="instances:read")
    tokens = flow.exchange(flow.code()).json()
    assert tokens["scope"] == "instances:read"
    assert not asyncio.run(mcp_call(server, tokens["access_token"], "list_models", {})).is_error
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "provision_instance",
            "arguments": {"model": "org/name"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    refused = httpx2.post(
        f"{server.url}/mcp",
        json=body,
        headers={
            "Authorization": f"Bearer {tokens['access_token']}",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "tools/call",
            "Mcp-Name": "provision_instance",
        },
    )
    assert refused.status_code == 403
    assert refused.json()["error"] == "insufficient_scope"
    challenge = refused.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="instances:write"' in challenge


def test_denied_consent_goes_back_with_the_error(server: AuxenServer, person: Person) -> None:
    flow = Flow(server, person)
    answer = person.consent(flow.authorize_url(), decision="deny")
    assert answer["error"] == "access_denied" and answer["state"] == "st-123"
    assert answer["iss"] == server.url and "code" not in answer


def test_consent_needs_sign_in_and_a_csrf_token(server: AuxenServer, person: Person) -> None:
    flow = Flow(server, person)
    step = person.http.get(flow.authorize_url())
    consent_url = step.headers["location"]
    stranger = httpx2.Client(base_url=server.url, follow_redirects=False)
    assert stranger.get(consent_url).headers["location"].startswith("/login?next=")
    page = person.http.get(consent_url)
    token = re.search(r'name="request" value="([^"]+)"', page.text)
    assert token
    forged = person.http.post(
        "/oauth/consent", data={"request": token.group(1), "decision": "approve"}
    )
    assert forged.status_code == 403
    tampered = person.http.get("/oauth/consent?request=" + token.group(1)[:-4] + "AAAA")
    assert tampered.status_code == 400


def test_wrong_audience_and_unknown_tokens_are_refused(server: AuxenServer, person: Person) -> None:
    for token in ("auxo_" + secrets.token_urlsafe(32), "auxr_notanaccesstoken"):
        reply = httpx2.post(
            f"{server.url}/mcp", headers={"Authorization": f"Bearer {token}"}, json={}
        )
        assert reply.status_code == 401
        assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    # A twin server on the same database but another public URL: a real token issued
    # for this server's /mcp is not one for the twin's.
    flow = Flow(server, person)
    tokens = flow.exchange(flow.code()).json()
    twin = AuxenServer(server.data_dir, server.database_url).start()
    try:
        elsewhere = httpx2.post(
            f"{twin.url}/mcp",
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
            json={},
        )
        assert elsewhere.status_code == 401
        challenge = elsewhere.headers["www-authenticate"]
        assert 'error="invalid_token"' in challenge and twin.url in challenge
    finally:
        twin.stop()
    assert not asyncio.run(mcp_call(server, tokens["access_token"], "list_models", {})).is_error


def test_consent_is_remembered_until_revoked_from_the_account_page(
    server: AuxenServer, person: Person
) -> None:
    flow = Flow(server, person, scope="instances:read")
    first = flow.exchange(flow.code()).json()
    # The same client asking for no more than it was allowed: straight back, no page.
    step = person.http.get(flow.authorize_url())
    again = person.http.get(step.headers["location"])
    assert again.status_code == 303 and again.headers["location"].startswith(REDIRECT)
    answer = parse_qs(urlsplit(again.headers["location"]).query)
    assert answer["state"] == ["st-123"] and answer["iss"] == [server.url]
    second = flow.exchange(answer["code"][0]).json()
    # The approval was told to the workspace, once: a remembered consent is nothing new.
    told = sql(
        server.database_url,
        "SELECT data_json FROM notification WHERE event = 'oauth_client_authorized'",
    )
    mine = [json.loads(d) for (d,) in told if json.loads(d)["client_id"] == flow.client_id]
    assert len(mine) == 1 and mine[0]["client_name"] == "Hand Client"
    assert mine[0]["scopes"] == "instances:read"
    # Re-authorizing replaced the earlier grant: its tokens no longer work.
    assert (
        httpx2.post(
            f"{server.url}/mcp",
            headers={"Authorization": f"Bearer {first['access_token']}"},
            json={},
        ).status_code
        == 401
    )
    refreshed = flow.token(grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert refreshed.status_code == 400
    assert not asyncio.run(mcp_call(server, second["access_token"], "list_models", {})).is_error
    # Asking for more than was allowed shows the page again.
    wider = person.http.get(flow.authorize_url(scope="instances:read inference"))
    page = person.http.get(wider.headers["location"])
    assert page.status_code == 200 and "<code>inference</code>" in page.text
    # The account page lists the agent; revoking forgets the consent and ends its tokens.
    account = person.http.get("/account")
    assert "Hand Client" in account.text
    consent_ids = re.findall(r'name="consent_id" value="([^"]+)"', account.text)
    assert consent_ids
    for consent_id in consent_ids:
        done = person.http.post(
            "/account/apps/revoke", data={"csrf_token": csrf_of(account), "consent_id": consent_id}
        )
        assert done.status_code == 303
    assert "No agent has been allowed" in person.http.get("/account").text
    assert httpx2.post(
        f"{server.url}/mcp", headers={"Authorization": f"Bearer {second['access_token']}"},
        json={},
    ).status_code == 401  # fmt: skip
    step = person.http.get(flow.authorize_url())
    assert person.http.get(step.headers["location"]).status_code == 200  # asks again


def test_guessing_at_the_token_endpoint_is_throttled(server: AuxenServer, person: Person) -> None:
    flow = Flow(server, person)
    code = flow.code()
    where = {"X-Forwarded-For": "198.51.100.77"}

    def exchange(verifier: str) -> httpx2.Response:
        return httpx2.post(
            f"{server.url}/token",
            headers=where,
            data={"client_id": flow.client_id, "grant_type": "authorization_code",
                  "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier},
        )  # fmt: skip

    statuses = [exchange(secrets.token_urlsafe(48)).status_code for _ in range(10)]
    assert statuses == [400] * 10
    slowed = exchange(flow.verifier)  # even the right verifier must wait now
    assert slowed.status_code == 429 and slowed.json()["error"] == "too_many_requests"
    assert int(slowed.headers["retry-after"]) >= 1 and slowed.headers["cache-control"] == "no-store"
    time.sleep(int(slowed.headers["retry-after"]) + 0.2)
    assert exchange(flow.verifier).status_code == 200  # the code was not spent meanwhile


def test_guessing_a_client_secret_is_throttled_per_client(server: AuxenServer) -> None:
    made = httpx2.post(
        f"{server.url}/register",
        json={"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_post"},
    ).json()
    assert made["client_secret"]

    def refresh(secret: str, address: str) -> httpx2.Response:
        return httpx2.post(
            f"{server.url}/token",
            headers={"X-Forwarded-For": address},
            data={"grant_type": "refresh_token", "refresh_token": "auxr_x",
                  "client_id": made["client_id"], "client_secret": secret},
        )  # fmt: skip

    # From many addresses, so only the client's own counter can be what stops them.
    statuses = [refresh(f"wrong-{i}", f"198.51.100.{100 + i}").status_code for i in range(5)]
    assert statuses == [401] * 5
    slowed = refresh(made["client_secret"], "198.51.100.200")
    assert slowed.status_code == 429 and int(slowed.headers["retry-after"]) >= 1


def test_a_person_with_two_factor_passes_it_before_consenting(server: AuxenServer) -> None:
    owner = Person(server, "two-factor-owner@example.com")
    app, _ = enrol_totp(owner.http)
    fresh = httpx2.Client(base_url=server.url, follow_redirects=False, timeout=30)
    flow = Flow(server, owner)
    consent_url = fresh.get(flow.authorize_url()).headers["location"]
    to_login = fresh.get(consent_url)
    assert to_login.headers["location"].startswith("/login?next=")
    login_page = fresh.get(to_login.headers["location"])
    next_url = re.search(r'name="next" value="([^"]+)"', login_page.text)
    assert next_url
    password = fresh.post(
        "/login",
        data={"csrf_token": csrf_of(login_page), "email": "two-factor-owner@example.com",
              "password": PASSWORD, "next": next_url.group(1).replace("&amp;", "&")},
    )  # fmt: skip
    assert password.headers["location"].startswith("/login/mfa")
    assert fresh.get(consent_url).status_code == 303  # no consent page on a password alone
    mfa_page = fresh.get(password.headers["location"])
    done = fresh.post(
        "/login/mfa",
        data={"csrf_token": csrf_of(mfa_page), "code": app.code(),
              "next": re.search(r'name="next" value="([^"]+)"', mfa_page.text)
              .group(1).replace("&amp;", "&")},  # type: ignore[union-attr]
    )  # fmt: skip
    assert done.status_code == 303 and done.headers["location"].startswith("/oauth/consent")
    owner.http = fresh
    answer = owner.consent(flow.authorize_url())
    assert flow.exchange(answer["code"]).status_code == 200


# -- a server with short lifetimes: token expiry, client expiry, registration limits -----


@pytest.fixture(scope="module")
def brief(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuxenServer]:
    root = tmp_path_factory.mktemp("oauth-brief")
    srv = AuxenServer(
        root / "data",
        f"sqlite:///{root / 'auxen.db'}",
        extra_env={
            "AUXEN_OAUTH_ACCESS_TOKEN_TTL_S": "2",
            "AUXEN_OAUTH_UNUSED_CLIENT_TTL_S": "2",
            "AUXEN_OAUTH_REGISTRATIONS_PER_HOUR": "8",
        },
    ).start()
    try:
        yield srv
    finally:
        srv.stop_clean()


def test_access_tokens_expire_and_refresh_renews_them(brief: AuxenServer) -> None:
    flow = Flow(brief, Person(brief, "brief@example.com"))
    tokens = flow.exchange(flow.code()).json()
    assert tokens["expires_in"] == 2
    assert not asyncio.run(mcp_call(brief, tokens["access_token"], "list_models", {})).is_error
    time.sleep(2.5)
    expired = httpx2.post(
        f"{brief.url}/mcp", headers={"Authorization": f"Bearer {tokens['access_token']}"}, json={}
    )
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]
    renewed = flow.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert renewed.status_code == 200
    fresh = renewed.json()["access_token"]
    assert not asyncio.run(mcp_call(brief, fresh, "list_models", {})).is_error


def test_registered_clients_expire_unless_used(brief: AuxenServer) -> None:
    person = Person(brief, "expiry@example.com")
    idle, used = Flow(brief, person), Flow(brief, person)
    tokens = used.exchange(used.code()).json()  # an authorization counts as use
    time.sleep(2.5)
    gone = person.http.get(idle.authorize_url())
    assert gone.status_code == 400 and "consent" not in gone.headers.get("location", "")
    renewed = used.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert renewed.status_code == 200  # used within its idle time: still registered
    Flow(brief, person)  # a registration sweeps expired clients away
    assert _client_row(brief, idle.client_id) is None
    assert _client_row(brief, used.client_id) is not None


def test_registration_is_rate_limited_per_address(brief: AuxenServer) -> None:
    where = {"X-Forwarded-For": "203.0.113.50"}
    body = {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}
    replies = [httpx2.post(f"{brief.url}/register", json=body, headers=where) for _ in range(9)]
    assert [r.status_code for r in replies[:8]] == [201] * 8
    assert replies[8].status_code == 429 and replies[8].json()["error"] == "too_many_requests"
    assert int(replies[8].headers["retry-after"]) > 3000  # the hour's window
    other = httpx2.post(
        f"{brief.url}/register", json=body, headers={"X-Forwarded-For": "203.0.113.51"}
    )
    assert other.status_code == 201


def _client_row(server: AuxenServer, client_id: str) -> OAuthClient | None:
    async def read() -> OAuthClient | None:
        db = Database(server.database_url)
        try:
            async with db.system() as session:
                return await session.get(OAuthClient, client_id)
        finally:
            await db.close()

    return asyncio.run(read())


async def test_oauth_tools_see_only_the_consented_workspace(server: AuxenServer) -> None:
    person = await asyncio.to_thread(Person, server, "isolated@example.com")
    other = httpx2.post(f"{server.url}/mcp", json={}, headers={"Authorization": "Bearer nope"})
    assert other.status_code == 401
    flow = await asyncio.to_thread(Flow, server, person)
    code = await asyncio.to_thread(flow.code)
    tokens = (await asyncio.to_thread(flow.exchange, code)).json()
    result = await mcp_call(
        server, tokens["access_token"], "get_instance", {"instance_id": "inst_x"}
    )
    assert error_text(result).startswith("not_found")


@pytest.mark.parametrize(
    "client_id",
    [
        "https://127.0.0.1/client.json",  # loopback
        "https://10.0.0.7/client.json",  # private
        "https://169.254.169.254/latest/meta-data",  # link-local (cloud metadata)
        "https://[::1]/client.json",
        "https://localhost/client.json",
        "https://user:pw@example.com/client.json",  # credentials in the URL
        "https://example.invalid/",  # no path
    ],
)
def test_client_id_documents_are_never_fetched_from_inside(
    server: AuxenServer, person: Person, client_id: str
) -> None:
    flow = Flow(server, person)
    refused = person.http.get(flow.authorize_url(client_id=client_id))
    assert refused.status_code == 400, refused.text
    assert "consent" not in refused.headers.get("location", "")


def test_client_id_document_rules() -> None:
    from auxen.auth.oauth import cimd

    url = "https://agent.example.com/oauth/client.json"
    good = {"client_id": url, "client_name": "Agent", "redirect_uris": ["https://a.example/cb"]}
    client = cimd.client_from_document(url, json.dumps(good).encode())
    assert client.client_id == url and client.token_endpoint_auth_method == "none"
    for bad in (
        {**good, "client_id": "https://other.example/client.json"},
        {**good, "redirect_uris": []},
        {**good, "redirect_uris": ["http://evil.example/cb"]},
        {**good, "token_endpoint_auth_method": "client_secret_basic"},
    ):
        with pytest.raises(cimd.DocumentError):
            cimd.client_from_document(url, json.dumps(bad).encode())
    with pytest.raises(cimd.DocumentError):
        cimd.client_from_document(url, b"not json")
    assert cimd.public_address("93.184.216.34")
    for address in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1",
                    "fe80::1", "::ffff:10.0.0.1", "224.0.0.1", "0.0.0.0"):  # fmt: skip
        assert not cimd.public_address(address), address
    for url_ in ("http://a.example/c", "https://a.example", "https://a.example/c#f"):
        with pytest.raises(cimd.DocumentError):
            cimd.check_url(url_)


def test_conformance_suite_authorization_scenarios(
    server: AuxenServer, person: Person, tmp_path: Path
) -> None:
    """The official suite's authorization-server scenarios (metadata, then a real
    authorization-code grant whose sign-in and consent this test performs)."""
    from tests.test_mcp_conformance import NODE, SUITE

    port = free_port()
    callback = f"http://127.0.0.1:{port}/callback"
    client_id = httpx2.post(
        f"{server.url}/register",
        json={"redirect_uris": [callback], "token_endpoint_auth_method": "none"},
    ).json()["client_id"]
    suite = subprocess.Popen(
        [
            *(str(NODE), str(SUITE), "authorization", "--url", server.url),
            *("--client-id", client_id, "--resource", f"{server.url}/mcp"),
            *("-p", str(port), "-o", str(tmp_path)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert suite.stdout is not None
    output = []
    try:
        for line in suite.stdout:
            output.append(line)
            if line.startswith(f"{server.url}/authorize?"):
                step = person.http.get(line.strip())
                page = person.http.get(step.headers["location"])
                request_token = re.search(r'name="request" value="([^"]+)"', page.text)
                workspace = re.search(r'<option value="([^"]+)"', page.text)
                assert request_token and workspace, page.text
                answer = person.http.post(
                    "/oauth/consent",
                    data={
                        "csrf_token": csrf_of(page.text),
                        "request": request_token.group(1),
                        "workspace_id": workspace.group(1),
                        "decision": "approve",
                    },
                )
                location = answer.headers["location"]
                assert location.startswith(callback)
                for _ in range(50):  # the suite's callback server may still be starting
                    try:
                        httpx2.get(location, timeout=5)
                        break
                    except httpx2.ConnectError:
                        time.sleep(0.1)
        assert suite.wait(timeout=120) == 0, "".join(output)
    finally:
        if suite.poll() is None:
            suite.kill()
    checks = [c for f in tmp_path.glob("*/checks.json") for c in json.loads(f.read_text())]
    assert {c["id"] for c in checks} >= {
        "authorization-server-metadata",
        "authorization-code-grant",
    }
    assert all(c["status"] in ("SUCCESS", "INFO") for c in checks), [
        (c["id"], c["status"], c.get("errorMessage")) for c in checks
    ]
