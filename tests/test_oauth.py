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
from urllib.parse import parse_qs, quote, urlencode, urlsplit

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
from tests.mcp_clients import INITIALIZE, error_text, structured
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
        assert "/oauth/consent?" in step.headers["location"], step.headers["location"]
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


def sdk_client(
    server: AuxenServer,
    person: Person,
    storage: MemoryStorage,
    *,
    mode: str = "auto",
    seen: list[httpx2.Request] | None = None,
    authorizations: list[str] | None = None,
) -> Client:
    """The SDK client with its OAuth provider; `seen` collects every request it sends,
    `authorizations` every authorization URL it sends the person to."""
    answers: list[dict[str, str]] = []

    async def redirect_handler(url: str) -> None:
        if authorizations is not None:
            authorizations.append(url)
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

    async def record(request: httpx2.Request) -> None:
        if seen is not None:
            seen.append(request)

    http = httpx2.AsyncClient(auth=auth, timeout=60, event_hooks={"request": [record]})
    return Client(streamable_http_client(f"{server.url}/mcp", http_client=http), mode=mode)


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


def somewhere() -> dict[str, str]:
    """Headers that make a request come from an address of its own (the server believes
    X-Forwarded-For from loopback, as from a reverse proxy)."""
    return {"X-Forwarded-For": f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(256)}"}


class Flow:
    """A client driven by hand. It registers and calls the token endpoint from an address
    of its own (X-Forwarded-For, which the server believes from loopback), so what one
    test's refused requests count against never slows another's."""

    def __init__(
        self,
        server: AuxenServer,
        person: Person,
        scope: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.server = server
        self.person = person
        self.where = somewhere()
        reply = httpx2.post(
            f"{server.url}/register",
            json={
                "client_name": "Hand Client",
                "redirect_uris": [REDIRECT],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                **(metadata or {}),
            },
            headers=self.where,
        )
        assert reply.status_code == 201, reply.text
        self.client_id = reply.json()["client_id"]
        self.client_secret: str | None = reply.json().get("client_secret")
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

    def code_again(self, **overrides: str) -> str:
        """A code from the consent the person already gave (no page shown)."""
        step = self.person.http.get(self.authorize_url(**overrides))
        back = self.person.http.get(step.headers["location"])
        assert back.status_code == 303 and back.headers["location"].startswith(REDIRECT)
        return parse_qs(urlsplit(back.headers["location"]).query)["code"][0]

    def token(self, **form: str) -> httpx2.Response:
        return httpx2.post(
            f"{self.server.url}/token",
            data={"client_id": self.client_id, **form},
            headers=self.where,
        )

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


# -- tokens bound to their resource (RFC 8707), and consent that covers exactly ----------


def _error_redirect(reply: httpx2.Response) -> dict[str, list[str]]:
    """The query of an error sent back to the client (never via the consent page)."""
    assert reply.status_code in (302, 303), reply.text
    location = reply.headers["location"]
    assert location.startswith(REDIRECT) and "/oauth/consent" not in location, location
    return parse_qs(urlsplit(location).query)


@pytest.mark.parametrize(
    "resource",
    [
        "https://other.example/mcp",
        "http://127.0.0.1:1/mcp",  # another server on this host
        "{url}",  # this server, but not its MCP endpoint
        "{url}/mcp/elsewhere",
        "{url}/v1",
    ],
)
def test_authorize_refuses_a_token_for_another_resource(
    server: AuxenServer, person: Person, resource: str
) -> None:
    flow = Flow(server, person, scope="instances:read")
    # Even once the person has allowed this client (a remembered consent skips the page).
    flow.exchange(flow.code())
    foreign = resource.format(url=server.url)
    answer = _error_redirect(person.http.get(flow.authorize_url(resource=foreign)))
    assert answer["error"] == ["invalid_target"] and "code" not in answer
    assert answer["iss"] == [server.url] and answer["state"] == ["st-123"]
    # Named beside this server's own (RFC 8707 allows several): refused all the same.
    both = flow.authorize_url() + "&" + urlencode({"resource": foreign})
    assert _error_redirect(person.http.get(both))["error"] == ["invalid_target"]
    # Its own resource, spelled with a trailing slash, is the same resource.
    same = person.http.get(flow.authorize_url(resource=f"{server.url}/mcp/"))
    again = person.http.get(same.headers["location"])
    assert again.status_code == 303 and "code=" in again.headers["location"]


def test_consent_names_the_resource_and_covers_exactly_what_was_allowed(
    server: AuxenServer, person: Person
) -> None:
    other = "http://127.0.0.1:53682/other-callback"
    flow = Flow(server, person, "instances:read", {"redirect_uris": [REDIRECT, other]})
    step = person.http.get(flow.authorize_url())
    page = person.http.get(step.headers["location"])
    assert page.status_code == 200 and f"<code>{server.url}/mcp</code>" in page.text
    tokens = flow.exchange(flow.code()).json()
    # Same client, same scopes, but another registered redirect URI: asked again.
    elsewhere = person.http.get(flow.authorize_url(redirect_uri=other))
    shown = person.http.get(elsewhere.headers["location"])
    assert shown.status_code == 200 and "Allow" in shown.text, shown.headers
    # A server with another public URL on the same database (its resource is its own
    # /mcp): the consent given here does not cover it, and nothing issued here works there.
    twin = AuxenServer(server.data_dir, server.database_url).start()
    try:
        at_twin = flow.authorize_url(resource=f"{twin.url}/mcp")
        asked = person.http.get(at_twin.replace(server.url, twin.url, 1))
        assert asked.status_code == 302, asked.text
        there = person.http.get(asked.headers["location"])
        assert there.status_code == 200 and f"<code>{twin.url}/mcp</code>" in there.text
        refreshed = httpx2.post(
            f"{twin.url}/token",
            headers=flow.where,
            data={"client_id": flow.client_id, "grant_type": "refresh_token",
                  "refresh_token": tokens["refresh_token"]},
        )  # fmt: skip
        assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
        code = flow.code_again()
        spent_there = httpx2.post(
            f"{twin.url}/token",
            headers=flow.where,
            data={"client_id": flow.client_id, "grant_type": "authorization_code",
                  "code": code, "redirect_uri": REDIRECT, "code_verifier": flow.verifier},
        )  # fmt: skip
        assert spent_there.status_code == 400 and spent_there.json()["error"] == "invalid_grant"
    finally:
        twin.stop()
    # The refused attempts changed nothing here: the code and refresh token still work.
    assert flow.exchange(code).status_code == 200
    # A refresh may name the grant's own resource, and no other.
    fresh = flow.exchange(flow.code_again()).json()
    wrong = flow.token(grant_type="refresh_token", refresh_token=fresh["refresh_token"],
                       resource="https://other.example/mcp")  # fmt: skip
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_target"
    also = httpx2.post(
        f"{server.url}/token", headers=flow.where,
        data={"client_id": flow.client_id, "grant_type": "refresh_token",
              "refresh_token": fresh["refresh_token"],
              "resource": [f"{server.url}/mcp", "https://other.example/mcp"]},
    )  # fmt: skip
    assert also.status_code == 400 and also.json()["error"] == "invalid_target"
    right = flow.token(grant_type="refresh_token", refresh_token=fresh["refresh_token"],
                       resource=f"{server.url}/mcp")  # fmt: skip
    assert right.status_code == 200, right.text


# -- redirect URIs and everything else a client registers -----------------------------


def _client_count(server: AuxenServer) -> int:
    return int(sql(server.database_url, "SELECT COUNT(*) FROM oauth_client")[0][0])


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"redirect_uris": ["https://trusted.example@attacker.example/cb"]}, "redirect_uris"),
        ({"redirect_uris": ["https://user:pw@app.example/cb"]}, "redirect_uris"),
        ({"redirect_uris": ["https://app.example/cb#"]}, "redirect_uris"),
        ({"redirect_uris": ["https://app.example\\@attacker.example/cb"]}, "redirect_uris"),
        ({"redirect_uris": ["http://app.example/cb"]}, "redirect_uris"),
        ({"redirect_uris": ["http://127.0.0.1.attacker.example/cb"]}, "redirect_uris"),
        ({"redirect_uris": ["ftp://app.example/cb"]}, "redirect_uris"),
        ({"redirect_uris": ["https://app.example:99999/cb"]}, "redirect_uris"),
        ({"redirect_uris": ["https://app.example/" + "a" * 2100]}, "redirect_uris"),
        ({"redirect_uris": [f"https://app{i}.example/cb" for i in range(11)]}, "redirect_uris"),
        ({"client_name": "n" * 201}, "client_name"),
        ({"client_name": "Agent\nApproved by Auxen"}, "client_name"),
        ({"contacts": [f"c{i}@example.com" for i in range(11)]}, "contacts"),
        ({"contacts": ["c" * 400 + "@example.com"]}, "contacts"),
        ({"grant_types": ["authorization_code"] + [f"g{i}" for i in range(10)]}, "grant_types"),
        ({"response_types": ["code", "r" * 200]}, "response_types"),
        ({"scope": "instances:read " * 50}, "scope"),
        ({"logo_uri": "https://app.example/" + "l" * 2100}, "logo_uri"),
        ({"software_id": "s" * 300}, "software_id"),
        ({"jwks": {"keys": [{"kty": "oct", "k": "x" * 5000}]}}, "jwks"),
    ],
)
def test_registration_bounds_every_field(
    server: AuxenServer, metadata: dict[str, Any], field: str
) -> None:
    before = _client_count(server)
    body = {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none", **metadata}
    reply = httpx2.post(f"{server.url}/register", json=body, headers=somewhere())
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] in ("invalid_client_metadata", "invalid_redirect_uri")
    assert field in reply.json()["error_description"] and reply.json()["field"] == field
    assert _client_count(server) == before


def test_a_huge_registration_is_a_clear_400_and_stores_nothing(server: AuxenServer) -> None:
    before = _client_count(server)
    body = json.dumps(
        {
            "redirect_uris": [REDIRECT],
            "token_endpoint_auth_method": "none",
            "client_name": "x" * 20_000_000,
        }
    )
    try:
        reply = httpx2.post(
            f"{server.url}/register",
            content=body,
            headers={"Content-Type": "application/json", **somewhere()},
            timeout=120,
        )
    except httpx2.TransportError:
        pytest.fail("the server dropped the connection instead of answering")
    # 400 naming the limit from the registration itself; 413 if a body-size limit in
    # front of every endpoint refuses it first. Either way a JSON error, and no client.
    assert reply.status_code in (400, 413), reply.text
    if reply.status_code == 400:
        assert reply.json()["error"] == "invalid_client_metadata"
        assert "16384 bytes" in reply.json()["error_description"]
    assert reply.json()["error"]
    assert _client_count(server) == before
    # A real client's registration, with every field in bounds, still works.
    ok = httpx2.post(
        f"{server.url}/register",
        json={"redirect_uris": [REDIRECT, "https://app.example:8443/cb"],
              "client_name": "n" * 200, "contacts": ["ops@app.example"],
              "token_endpoint_auth_method": "none", "logo_uri": "https://app.example/l.png"},
        headers=somewhere(),
    )  # fmt: skip
    assert ok.status_code == 201, ok.text


def test_stored_clients_are_held_to_todays_redirect_rules(
    server: AuxenServer, person: Person
) -> None:
    """A registration stored before the rules (written straight into the database) can
    no longer send anyone to a userinfo URI; the consent page shows the real host."""
    tricky = "https://trusted.example@attacker.example/cb"
    client_id = secrets.token_hex(8)
    info = {"client_id": client_id, "client_name": "Old Client",
            "redirect_uris": [tricky, "https://app.example:8443/cb"],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"]}  # fmt: skip

    async def insert() -> None:
        db = Database(server.database_url)
        try:
            async with db.system() as session:
                session.add(OAuthClient(id=client_id, info_json=json.dumps(info)))
                await session.commit()
        finally:
            await db.close()

    asyncio.run(insert())
    flow = Flow(server, person)
    flow.client_id = client_id
    refused = person.http.get(flow.authorize_url(redirect_uri=tricky))
    assert refused.status_code == 400 and "location" not in refused.headers
    allowed = person.http.get(flow.authorize_url(redirect_uri="https://app.example:8443/cb"))
    page = person.http.get(allowed.headers["location"])
    assert page.status_code == 200 and "<code>app.example:8443</code>" in page.text


def test_redirect_uri_rules_and_the_host_they_show() -> None:
    from auxen.auth.oauth.redirect_uris import RedirectUriError, check_redirect_uri, display_host

    for good in ("https://app.example/cb", "https://app.example:8443/cb?x=1",
                 "http://127.0.0.1:53682/callback", "http://[::1]/cb",
                 "http://localhost:8080/cb", "https://192.0.2.7/cb"):  # fmt: skip
        check_redirect_uri(good)
    for bad in ("https://trusted.example@attacker.example/cb", "https://@attacker.example/",
                "https://a.example/cb#", "https://a.example/c b", "https://a.example/\u00e9",
                "https:///cb", "http://10.0.0.1/cb", "javascript:alert(1)",
                "https://-bad-.example/cb", "https://a.example:0x50/cb"):  # fmt: skip
        with pytest.raises(RedirectUriError):
            check_redirect_uri(bad)
    assert display_host("https://trusted.example@attacker.example/cb") == "attacker.example"
    assert display_host("http://[::1]:8080/cb") == "[::1]:8080"
    assert display_host("https://App.Example/cb") == "app.example"


def test_client_id_documents_are_bounded_like_registrations() -> None:
    from auxen.auth.oauth import cimd

    url = "https://agent.example.com/oauth/client.json"
    good = {"client_id": url, "client_name": "Agent", "redirect_uris": ["https://a.example/cb"]}
    for bad in (
        {**good, "redirect_uris": ["https://trusted.example@attacker.example/cb"]},
        {**good, "redirect_uris": ["https://a.example/cb#frag"]},
        {**good, "client_name": "n" * 201},
        {**good, "contacts": ["x@a.example"] * 11},
        {**good, "redirect_uris": [f"https://a{i}.example/cb" for i in range(11)]},
    ):
        with pytest.raises(cimd.DocumentError):
            cimd.client_from_document(url, json.dumps(bad).encode())


# -- scopes: ask for anything Auxen supports, get what the person consents to ------------


def test_any_client_may_ask_for_any_supported_scope(server: AuxenServer, person: Person) -> None:
    flow = Flow(server, person, "instances:read billing", {"scope": "instances:read"})
    step = person.http.get(flow.authorize_url())
    assert "/oauth/consent?" in step.headers["location"], step.headers["location"]
    page = person.http.get(step.headers["location"])
    assert page.status_code == 200 and "<code>billing</code>" in page.text
    tokens = flow.exchange(flow.code()).json()
    assert set(tokens["scope"].split()) == {"instances:read", "billing"}
    balance = asyncio.run(mcp_call(server, tokens["access_token"], "get_balance", {}))
    assert not balance.is_error, balance.content
    unknown = _error_redirect(person.http.get(flow.authorize_url(scope="instances:read admin")))
    assert unknown["error"] == ["invalid_scope"] and unknown["iss"] == [server.url]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_an_agent_steps_up_to_billing_on_its_open_connection(
    server: AuxenServer, mode: str
) -> None:
    """The MCP Python SDK client signs in with the default scopes, then calls a tool that
    needs `billing`: the 403 sends it back through consent for the wider grant, and the
    same connection (the same MCP session, on the 2025-11-25 handshake) carries on."""
    person = await asyncio.to_thread(Person, server, f"step-up-{mode}@example.com")
    authorizations: list[str] = []
    storage, seen = MemoryStorage(), list[httpx2.Request]()
    async with sdk_client(
        server, person, storage, mode=mode, seen=seen, authorizations=authorizations
    ) as client:
        assert structured(await client.call_tool("list_instances", {})) == {"instances": []}
        assert "billing" not in (storage.tokens.scope or "").split()  # type: ignore[union-attr]
        balance = structured(await client.call_tool("get_balance", {}))
        assert "balance_usd" in balance
        again = structured(await client.call_tool("list_instances", {}))
        assert again == {"instances": []}
    consented = [parse_qs(urlsplit(url).query)["scope"][0] for url in authorizations]
    assert len(consented) == 2 and "billing" in consented[1].split()
    assert set(consented[0].split()) <= set(consented[1].split())  # nothing given up
    assert storage.tokens is not None and "billing" in (storage.tokens.scope or "").split()
    # The tool call refused for its scope was sent again after the new consent, on the
    # connection's one session (one initialize was ever accepted, none after it).
    mcp = [r for r in seen if r.url.path == "/mcp" and r.method == "POST"]
    sent = [(json.loads(r.content), r) for r in mcp]
    balance_calls = [r for c, r in sent if isinstance(c, dict) and _tool(c) == "get_balance"]
    assert len(balance_calls) == 2, [c for c, _ in sent]
    opened = [r for c, r in sent if isinstance(c, dict) and c.get("method") == "initialize"]
    assert len({id(r) for r in opened}) <= 1  # one initialize (sent again after the 401)
    if mode == "legacy":
        sessions = {r.headers.get("mcp-session-id") for r in mcp if r not in opened}
        assert len(sessions) == 1 and None not in sessions, sessions


def _tool(call: dict[str, Any]) -> str | None:
    params = call.get("params")
    if call.get("method") != "tools/call" or not isinstance(params, dict):
        return None
    return str(params.get("name"))


async def test_a_stepped_up_session_still_belongs_to_its_person_and_client(
    server: AuxenServer,
) -> None:
    person = await asyncio.to_thread(Person, server, "session-owner@example.com")
    first = await asyncio.to_thread(Flow, server, person, "instances:read")
    code = await asyncio.to_thread(first.code)
    narrow = (await asyncio.to_thread(first.exchange, code)).json()["access_token"]
    headers = {"Accept": "application/json, text/event-stream",
               "Authorization": f"Bearer {narrow}"}  # fmt: skip
    opened = httpx2.post(f"{server.url}/mcp", headers=headers, json=INITIALIZE)
    assert opened.status_code == 200, opened.text
    session = {"Mcp-Session-Id": opened.headers["mcp-session-id"],
               "MCP-Protocol-Version": "2025-11-25"}  # fmt: skip
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}

    def listed(token: str) -> int:
        return httpx2.post(
            f"{server.url}/mcp", json=listing,
            headers={**headers, **session, "Authorization": f"Bearer {token}"},
        ).status_code  # fmt: skip

    # The same client and person, re-authorized with more scopes: the session carries on
    # (the narrower grant is revoked, as any re-authorization revokes the one before).
    wider = await asyncio.to_thread(first.authorize_url, scope="instances:read billing")
    answer = await asyncio.to_thread(person.consent, wider)
    stepped = (await asyncio.to_thread(first.exchange, answer["code"])).json()["access_token"]
    assert listed(stepped) == 200
    assert listed(narrow) == 401
    # Another client of the same person, and the same client for another person: 404.
    other_client = await asyncio.to_thread(Flow, server, person)
    other_code = await asyncio.to_thread(other_client.code)
    theirs = (await asyncio.to_thread(other_client.exchange, other_code)).json()
    assert listed(theirs["access_token"]) == 404
    stranger = await asyncio.to_thread(Person, server, "session-stranger@example.com")
    first.person = stranger
    stranger_code = await asyncio.to_thread(first.code)
    strangers = (await asyncio.to_thread(first.exchange, stranger_code)).json()
    assert listed(strangers["access_token"]) == 404
    assert listed(stepped) == 200


# -- client_secret_basic and client_secret_post -------------------------------------------


def _basic(client_id: str, secret: str) -> dict[str, str]:
    """RFC 6749 2.3.1: each part form-urlencoded, then joined and base64-encoded."""
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def _post(flow: Flow, path: str, form: dict[str, str], **headers: str) -> httpx2.Response:
    return httpx2.post(f"{flow.server.url}{path}", data=form, headers={**flow.where, **headers})


def test_confidential_clients_authenticate_with_basic_or_in_the_body(
    server: AuxenServer, person: Person
) -> None:
    basic = Flow(server, person, None, {"token_endpoint_auth_method": "client_secret_basic"})
    assert basic.client_secret
    right = _basic(basic.client_id, basic.client_secret)
    code = basic.code()
    form = {"grant_type": "authorization_code", "redirect_uri": REDIRECT,
            "code_verifier": basic.verifier, "code": code}  # fmt: skip
    # RFC 6749 2.3.1: Basic alone, no client_id in the body; and its failures.
    wrong = _post(basic, "/token", form, **_basic(basic.client_id, "not-the-secret"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    mismatched = _post(basic, "/token", {**form, "client_id": "someone-else"}, **right)
    assert mismatched.status_code == 401 and mismatched.json()["error"] == "invalid_client"
    secret_in_body = {"client_id": basic.client_id, "client_secret": basic.client_secret}
    in_body = _post(basic, "/token", {**form, **secret_in_body})
    assert in_body.status_code == 401  # registered for Basic: the body is not its method
    good = _post(basic, "/token", form, **right)
    assert good.status_code == 200, good.text
    refreshed = _post(
        basic, "/token",
        {"grant_type": "refresh_token", "refresh_token": good.json()["refresh_token"]}, **right,
    )  # fmt: skip
    assert refreshed.status_code == 200, refreshed.text
    also_named = _post(
        basic, "/token",
        {"grant_type": "refresh_token", "refresh_token": refreshed.json()["refresh_token"],
         "client_id": basic.client_id}, **right,
    )  # fmt: skip
    assert also_named.status_code == 200, also_named.text  # the id in both: the same id
    tokens = also_named.json()
    revoked = _post(basic, "/revoke", {"token": tokens["refresh_token"]}, **right)
    assert revoked.status_code == 200
    assert asyncio.run(mcp_call_status(server, tokens["access_token"])) == 401

    post = Flow(server, person, None, {"token_endpoint_auth_method": "client_secret_post"})
    assert post.client_secret
    form = {"grant_type": "authorization_code", "redirect_uri": REDIRECT, "code": post.code(),
            "code_verifier": post.verifier, "client_id": post.client_id}  # fmt: skip
    wrong = _post(post, "/token", {**form, "client_secret": "nope"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    missing = _post(post, "/token", form)
    assert missing.status_code == 401 and missing.json()["error"] == "invalid_client"
    good = _post(post, "/token", {**form, "client_secret": post.client_secret})
    assert good.status_code == 200, good.text


async def mcp_call_status(server: AuxenServer, token: str) -> int:
    async with httpx2.AsyncClient() as http:
        reply = await http.post(
            f"{server.url}/mcp", headers={"Authorization": f"Bearer {token}"}, json={}
        )
        return reply.status_code
