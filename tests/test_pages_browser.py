"""The sign-in pages in a real browser (headless Chromium from Debian, driven by
Playwright): a person signs up, turns on two-factor authentication by reading the key off
the set-up page into an authenticator app, signs out, signs in with a code, and allows an
agent on the consent page. Screenshots of each page land in build/screenshots/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from playwright.sync_api import Browser, Route

from tests.browsers import Authenticator, chromium, shot
from tests.servers import AuxenServer, sqlite_server

PASSWORD = "a browser-typed passphrase"
REDIRECT = "http://127.0.0.1:53999/callback"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuxenServer]:
    with sqlite_server(tmp_path_factory.mktemp("pages")) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def test_a_person_turns_on_two_factor_and_allows_an_agent(
    server: AuxenServer, browser: Browser
) -> None:
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    page.goto(f"{server.url}/signup")
    page.get_by_label("Email").fill("chromium@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Workspace name").fill("Browser Lab")
    shot(page, "signup")
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(f"{server.url}/dashboard")  # a new account lands on its dashboard
    assert "Browser Lab" in page.content()
    page.goto(f"{server.url}/account")

    page.get_by_role("button", name="Set up two-factor authentication").click()
    page.wait_for_url(f"{server.url}/account/mfa/setup")
    qr = page.locator("figure.qr svg")
    assert qr.is_visible() and qr.bounding_box()["width"] > 100  # type: ignore[index]
    shot(page, "mfa-setup")
    app = Authenticator(page.locator("code.secret").inner_text())
    page.get_by_label("The 6-digit code your app shows").fill(app.code())
    page.get_by_role("button", name="Turn on").click()
    page.wait_for_url(f"{server.url}/account/mfa/enable")
    assert page.locator("ul.recovery-codes li").count() == 10
    shot(page, "recovery-codes")

    page.goto(f"{server.url}/account")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{server.url}/login")

    # An agent's authorization request: sign-in, the second factor, then consent.
    client_id = httpx2.post(
        f"{server.url}/register",
        json={"client_name": "Browser Agent", "redirect_uris": [REDIRECT],
              "token_endpoint_auth_method": "none"},
    ).json()["client_id"]  # fmt: skip
    authorize = httpx2.URL(
        f"{server.url}/authorize",
        params={"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
                "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                "code_challenge_method": "S256", "state": "xyz",
                "resource": f"{server.url}/mcp"},
    )  # fmt: skip
    page.goto(str(authorize))
    page.wait_for_url(re.compile(r".*/login\?next=.*"))
    page.get_by_label("Email").fill("chromium@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/login/mfa.*"))
    shot(page, "sign-in-code")
    page.get_by_label("Code").fill(app.code())
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(re.compile(r".*/oauth/consent\?request=.*"))
    assert "Browser Agent" in page.content() and "127.0.0.1:53999" in page.content()
    shot(page, "consent")

    sent_back: list[str] = []

    def catch(route: Route) -> None:  # the agent's loopback redirect URI
        sent_back.append(route.request.url)
        route.fulfill(status=200, body="done")

    page.route(f"{REDIRECT}**", catch)
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(f"{REDIRECT}**")
    answer = parse_qs(urlsplit(sent_back[0]).query)
    assert answer["state"] == ["xyz"] and answer["iss"] == [server.url] and answer["code"]

    page.goto(f"{server.url}/account")
    assert "Browser Agent" in page.content() and "On since" in page.content()
    shot(page, "account")
    assert errors == [], errors  # no page broke its Content-Security-Policy or scripts
    context.close()
