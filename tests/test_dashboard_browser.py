"""The dashboard in a real browser (headless Chromium from Debian, driven by Playwright),
as a person uses it: sign up, turn on two-factor authentication, create an API key (shown
once), buy credits through Stripe Checkout (the real `stripe` library against the local
stand-in, the payment confirmed by a signed webhook), set a cap, connect an agent over
OAuth and watch the instance it provisions (a real vLLM process with the tiny model)
appear and come up without reloading, give the agent a budget, destroy the instance with
the keyboard only, and revoke the agent. Every page is checked for labelled inputs and a
narrow screen; screenshots land in build/screenshots/dashboard-*.png."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests import browsers
from tests.browsers import Authenticator, chromium, csrf_of
from tests.mcp_clients import structured
from tests.servers import AuxenServer
from tests.stripe_standin import StripeStandIn, sign

PASSWORD = "a dashboard passphrase"
NEW_PASSWORD = "a changed dashboard passphrase"
REDIRECT = "http://127.0.0.1:53998/callback"
LIVE_SECRET = "sk_live_standin"
WEBHOOK_SECRET = "whsec_live_standin"
PAGES = ["/dashboard", "/instances", "/keys", "/knowledge-bases", "/usage", "/billing", "/account"]


@dataclass
class World:
    server: AuxenServer
    stripe: StripeStandIn
    model: str
    key: str = ""  # the person's API key, to clean up after a failed test

    def destroy_leftovers(self) -> None:
        """Instances outlive a server's shutdown: destroy any a failed test left."""
        if not self.key:
            return
        http = self.server.client(self.key)
        for instance in http.get("/v1/instances").json()["data"]:
            if instance["state"] not in ("destroyed", "failed"):
                http.delete(f"/v1/instances/{instance['id']}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("dashboard")
    prices = root / "prices.toml"
    prices.write_text('[gpu.cpu]\nhourly_usd = "3.60"\n')
    stripe = StripeStandIn(LIVE_SECRET)
    with stripe.running():
        server = AuxenServer(
            root / "data",
            f"sqlite:///{root / 'auxen.db'}",
            extra_env={
                "AUXEN_MODELS_DIR": str(tiny_model.parent),
                "AUXEN_PRICES_FILE": str(prices),
                "AUXEN_BILLING_TICK_S": "2",
                "AUXEN_STRIPE_SECRET_KEY": LIVE_SECRET,
                "AUXEN_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "AUXEN_STRIPE_API_BASE": stripe.url,
            },
        ).start()
        world = World(server, stripe, str(tiny_model))
        try:
            yield world
        finally:
            world.destroy_leftovers()
            server.stop_clean()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def shot(page: Page, name: str) -> None:
    browsers.shot(page, f"dashboard-{name}")


UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
  .map(e => e.name || e.id || e.outerHTML)"""


STICKING_OUT = """() => [...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
  .slice(0, 5).map(e => e.tagName + '.' + e.className + '#' + e.id)"""


def accessible(page: Page) -> None:
    """Every field has a label, the page has one h1, and the skip link leads to main."""
    assert page.evaluate(UNLABELLED) == [], page.url
    assert page.locator("h1").count() == 1, page.url
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"


def tab_to(page: Page, name: str, *, type_into: dict[str, str] | None = None) -> None:
    """Press Tab until the focused element's text starts with `name` (typing into the
    fields named in `type_into` on the way): the page must be usable with a keyboard."""
    for _ in range(60):
        page.keyboard.press("Tab")
        focused: dict[str, Any] = page.evaluate(
            "({id: document.activeElement.id, text: document.activeElement.textContent.trim()})"
        )
        if type_into and focused["id"] in type_into:
            page.keyboard.type(type_into.pop(focused["id"]))
        elif focused["text"].startswith(name):
            return
    raise AssertionError(f"tabbing never reached {name!r} on {page.url}")


class Agent:
    """An MCP client that signs in with OAuth (DCR + PKCE); the browser consents."""

    def __init__(self, server: AuxenServer) -> None:
        self.server = server
        reply = httpx2.post(
            f"{server.url}/register",
            json={"client_name": "Dashboard Agent", "redirect_uris": [REDIRECT],
                  "token_endpoint_auth_method": "none"},
        )  # fmt: skip
        assert reply.status_code == 201, reply.text
        self.client_id: str = reply.json()["client_id"]
        self.verifier = secrets.token_urlsafe(48)
        digest = hashlib.sha256(self.verifier.encode()).digest()
        self.challenge = base64.urlsafe_b64encode(digest).decode().rstrip("=")
        self.token = ""

    def authorize_url(self) -> str:
        return str(
            httpx2.URL(
                f"{self.server.url}/authorize",
                params={
                    "response_type": "code",
                    "client_id": self.client_id,
                    "redirect_uri": REDIRECT,
                    "code_challenge": self.challenge,
                    "code_challenge_method": "S256",
                    "state": "dash",
                    "resource": f"{self.server.url}/mcp",
                },
            )
        )

    def exchange(self, code: str) -> None:
        reply = httpx2.post(
            f"{self.server.url}/token",
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                  "code_verifier": self.verifier, "client_id": self.client_id,
                  "resource": f"{self.server.url}/mcp"},
        )  # fmt: skip
        assert reply.status_code == 200, reply.text
        self.token = reply.json()["access_token"]

    def call(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        async def go() -> dict[str, Any]:
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {self.token}"})
            async with (
                http,
                Client(streamable_http_client(f"{self.server.url}/mcp", http_client=http)) as c,
            ):
                return structured(await c.call_tool(tool, args))

        # Playwright's sync API owns this thread's event loop; the agent runs beside it.
        out: list[dict[str, Any]] = []
        thread = threading.Thread(target=lambda: out.append(asyncio.run(go())))
        thread.start()
        thread.join(timeout=120)
        assert out, f"{tool} did not answer"
        return out[0]

    def status_without_consent(self) -> int:
        return httpx2.post(
            f"{self.server.url}/mcp",
            headers={"Authorization": f"Bearer {self.token}",
                     "Accept": "application/json, text/event-stream"},
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        ).status_code  # fmt: skip


def test_a_person_runs_their_account_from_the_dashboard(world: World, browser: Browser) -> None:
    url = world.server.url
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    # Sign up, then turn on two-factor authentication from Security.
    page.goto(f"{url}/signup")
    page.get_by_label("Email").fill("owner@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Workspace name").fill("Dashboard Lab")
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(f"{url}/dashboard")
    page.goto(f"{url}/account")
    page.get_by_role("button", name="Set up two-factor authentication").click()
    app = Authenticator(page.locator("code.secret").inner_text())
    page.get_by_label("The 6-digit code your app shows").fill(app.code())
    page.get_by_role("button", name="Turn on").click()
    assert page.locator("ul.recovery-codes li").count() == 10
    page.goto(f"{url}/account")
    expect(page.get_by_text("On since")).to_be_visible()
    page.get_by_label("Current password").fill("not my password")
    page.get_by_label("New password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("alert")).to_have_text("the current password is wrong")
    page.get_by_label("Current password").fill(PASSWORD)
    page.get_by_label("New password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_text("Password changed.")).to_be_visible()
    shot(page, "security")

    # Every page: labelled fields, a skip link, one heading.
    for path in PAGES:
        page.goto(f"{url}{path}")
        accessible(page)
    page.goto(f"{url}/dashboard")
    expect(page.locator("#balance")).to_have_text("$0.00")
    shot(page, "overview-empty")

    # An API key, shown once with a copy button, and it works.
    page.goto(f"{url}/keys")
    page.get_by_label("Name").fill("CI pipeline")
    page.get_by_role("button", name="Create key").click()
    key = page.get_by_role("textbox", name="Key").input_value()
    assert key.startswith("auxen_live_")
    world.key = key
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy key").click()
    expect(page.get_by_text("Copied.")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == key
    shot(page, "key-created")
    assert world.server.client(key).get("/v1/instances").status_code == 200
    page.goto(f"{url}/keys")
    assert key not in page.content()  # shown once only
    expect(page.get_by_role("row", name=re.compile("CI pipeline"))).to_contain_text("active")

    # Buy credits: Stripe Checkout, then Stripe's signed webhook credits the workspace.
    checkout: list[str] = []

    def stripe_page(route: Route) -> None:
        checkout.append(route.request.url)
        route.fulfill(status=200, content_type="text/html", body="<title>Stripe</title>Pay")

    page.route("https://checkout.stripe.com/**", stripe_page)
    page.goto(f"{url}/billing")
    page.get_by_label("Amount in dollars").fill("20")
    page.get_by_role("button", name="Pay with Stripe").click()
    page.wait_for_url("https://checkout.stripe.com/**")
    session_id = checkout[0].rsplit("/", 1)[1]
    paid = world.stripe.pay(session_id)
    hook = httpx2.post(
        f"{url}/v1/stripe/webhook",
        content=paid,
        headers={"Stripe-Signature": sign(paid, WEBHOOK_SECRET),
                 "Content-Type": "application/json"},
    )  # fmt: skip
    assert hook.json()["outcome"] == "applied", hook.text
    page.goto(f"{url}/billing?credits=thanks")
    expect(page.locator("#balance")).to_have_text("$20.00")
    expect(page.get_by_role("row", name=re.compile("purchase"))).to_contain_text("+$20.00")

    # A monthly cap; a bad amount is refused and changes nothing.
    page.get_by_label("Monthly budget for the workspace").fill("lots")
    page.get_by_role("button", name="Save monthly budget").click()
    expect(page.get_by_role("alert")).to_contain_text("enter an amount in dollars")
    assert page.get_by_label("Monthly budget for the workspace").input_value() == ""
    page.get_by_label("Monthly budget for the workspace").fill("50")
    page.get_by_role("button", name="Save monthly budget").click()
    expect(page.get_by_text("Cap saved.")).to_be_visible()
    assert page.get_by_label("Monthly budget for the workspace").input_value() == "50"
    shot(page, "billing")

    # An agent connects (consent in this browser) and gets its own budget.
    agent = Agent(world.server)
    caught: list[str] = []

    def callback(route: Route) -> None:
        caught.append(route.request.url)
        route.fulfill(status=200, body="done")

    page.route(f"{REDIRECT}**", callback)
    page.goto(agent.authorize_url())
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(f"{REDIRECT}**")
    agent.exchange(parse_qs(urlsplit(caught[0]).query)["code"][0])
    page.goto(f"{url}/billing")
    page.get_by_label("Dashboard Agent: dollars per month").fill("5")
    page.get_by_role("button", name="Save budget for Dashboard Agent").click()
    expect(page.get_by_text("Cap saved.")).to_be_visible()
    expect(page.get_by_text("used $0.00 of $5.00 this month")).to_be_visible()

    # The agent provisions an instance; the open instances page shows it come up.
    page.goto(f"{url}/instances")
    expect(page.get_by_text("No instances")).to_be_visible()
    made = agent.call("provision_instance", {"model": world.model, "ttl_hours": 1})
    instance = made["instance"]["id"]
    page.get_by_role("link", name="New instances: show them").click(timeout=20_000)
    row = page.locator(f'tr[data-instance="{instance}"]')
    expect(row).to_be_visible()
    shot(page, "instance-provisioning")
    expect(row.locator('[data-field="state"]')).to_have_text("ready", timeout=400_000)
    expect(row.locator('[data-field="cost"]')).not_to_have_text("$0.00", timeout=20_000)
    shot(page, "instance-ready")
    page.goto(f"{url}/dashboard")
    expect(page.get_by_text("Running instances")).to_be_visible()
    expect(page.locator(".tiles")).to_contain_text("$3.60/h")
    shot(page, "overview")

    # A narrow screen: nothing wider than the viewport; tables scroll on their own.
    phone = browser.new_context(viewport={"width": 375, "height": 740})
    phone.add_cookies(context.cookies())
    small = phone.new_page()
    for path in ("/dashboard", "/instances", "/usage", "/billing"):
        small.goto(f"{url}{path}")
        wide = small.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert wide <= 0, (path, wide, small.evaluate(STICKING_OUT))
    shot(small, "narrow-billing")
    small.goto(f"{url}/instances")
    shot(small, "narrow-instances")
    phone.close()

    # Usage: charts with a table beside them, and CSV.
    page.goto(f"{url}/usage?days=7")
    assert page.locator("figure.chart svg[role=img]").count() == 2
    expect(page.get_by_role("row", name=re.compile(instance))).to_be_visible()
    shot(page, "usage")
    csv_text = page.evaluate("fetch('/usage.csv?days=7&by=instance').then(r => r.text())")
    assert instance in csv_text and csv_text.startswith("instance_id,")

    # Destroy with the keyboard only: tab to the row's Destroy link, then confirm.
    page.goto(f"{url}/instances")
    tab_to(page, "Destroy")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{url}/instances/{instance}/destroy")
    accessible(page)
    shot(page, "destroy-confirm")
    tab_to(page, "Destroy instance", type_into={"confirm": "not-the-id"})
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("type the instance id")  # still there
    tab_to(page, "Destroy instance", type_into={"confirm": instance})
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/instances\?destroyed=.*"))
    expect(page.locator(f'tr[data-instance="{instance}"] [data-field="state"]')).to_have_text(
        "destroyed", timeout=60_000
    )
    shot(page, "instance-destroyed")

    # Revoke the agent from Connected agents: its token stops working.
    page.goto(f"{url}/account#apps")
    expect(page.get_by_text("Dashboard Agent")).to_be_visible()
    page.get_by_role("button", name="Revoke access").click()
    page.wait_for_url(f"{url}/account")
    expect(page.get_by_text("No agent has been allowed")).to_be_visible()
    assert agent.status_without_consent() == 401
    shot(page, "agent-revoked")
    # No page broke its Content-Security-Policy or scripts; the only failed loads are
    # the refused forms above: a wrong current password (401), a bad cap amount and a
    # wrong confirmation (400).
    refused = [e for e in errors if re.search(r"status of 40[01] \((Bad Request|Unauth)", e)]
    assert len(refused) == 3 and len(errors) == 3, errors
    context.close()


def test_forms_need_a_session_and_a_csrf_token_and_a_new_password_signs_out_others(
    world: World,
) -> None:
    url = world.server.url
    # Signed out: pages send you to sign in, the poll endpoint answers 401.
    anonymous = httpx2.Client(base_url=url, follow_redirects=False)
    for path in PAGES[:-1]:
        assert anonymous.get(path).headers["location"].startswith("/login?next=")
    assert anonymous.get("/instances/states.json").status_code == 401
    # A forged form (no CSRF token matching the cookie) is refused before anything runs.
    http = httpx2.Client(base_url=url, follow_redirects=False)
    signup = http.get("/signup")
    token = re.search(r'name="csrf_token" value="([^"]+)"', signup.text)
    assert token
    done = http.post(
        "/signup",
        data={"csrf_token": token.group(1), "email": "forms@example.com",
              "password": PASSWORD, "workspace": "Forms"},
    )  # fmt: skip
    assert done.status_code == 303
    for path, form in [
        ("/keys", {"name": "forged"}),
        ("/billing/caps", {"scope": "monthly", "amount_usd": "1"}),
        ("/billing/checkout", {"amount_usd": "20"}),
        ("/instances/inst_x/destroy", {"confirm": "inst_x"}),
    ]:
        refused = http.post(path, data={**form, "csrf_token": "x" * 40})
        assert refused.status_code == 403, (path, refused.text)
    keys = http.get("/keys")
    assert "forged" not in keys.text
    billing = http.get("/billing")
    assert 'name="amount_usd" value=""' in billing.text  # no cap was set

    # Test mode: the switch shows (and makes) test-mode keys; live ones stay apart.
    live_key = http.post("/keys", data={"csrf_token": csrf_of(keys), "name": "live one"})
    assert "auxen_live_" in live_key.text
    overview = http.get("/dashboard")
    switched = http.post("/dashboard/mode", data={"csrf_token": csrf_of(overview), "mode": "test"})
    assert switched.status_code == 303
    test_keys = http.get("/keys")
    assert "Test mode" in test_keys.text and "live one" not in test_keys.text
    made = http.post("/keys", data={"csrf_token": csrf_of(test_keys), "name": "test one"})
    assert re.search(r'value="auxen_test_\w+"', made.text)
    back = http.post("/dashboard/mode", data={"csrf_token": csrf_of(overview), "mode": "live"})
    assert back.status_code == 303 and "live one" in http.get("/keys").text

    # A new password signs out every other browser, and the old one stops working.
    laptop = httpx2.Client(base_url=url, follow_redirects=False)
    login = laptop.get("/login")
    signed_in = laptop.post(
        "/login",
        data={"csrf_token": csrf_of(login), "email": "forms@example.com", "password": PASSWORD},
    )
    assert signed_in.status_code == 303 and laptop.get("/dashboard").status_code == 200
    account = http.get("/account")
    weak = http.post(
        "/account/password",
        data={
            "csrf_token": csrf_of(account),
            "current_password": PASSWORD,
            "new_password": "short",
        },
    )
    assert weak.status_code == 400 and laptop.get("/dashboard").status_code == 200
    changed = http.post(
        "/account/password",
        data={"csrf_token": csrf_of(account), "current_password": PASSWORD,
              "new_password": NEW_PASSWORD},
    )  # fmt: skip
    assert changed.status_code == 303
    assert http.get("/dashboard").status_code == 200  # this browser stays signed in
    assert laptop.get("/dashboard").headers["location"].startswith("/login")
    again = httpx2.Client(base_url=url, follow_redirects=False)
    old = again.post(
        "/login",
        data={"csrf_token": csrf_of(again.get("/login")), "email": "forms@example.com",
              "password": PASSWORD},
    )  # fmt: skip
    assert old.status_code == 401
