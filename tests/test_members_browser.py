"""The members page in a real browser (headless Chromium): an owner invites someone,
they accept through the link, the owner removes them after a confirmation, and the
removed person's browser is signed out at once. Screenshots land in build/screenshots/."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from tests.browsers import chromium, shot
from tests.servers import AuxenServer, sqlite_server

PASSWORD = "members in a browser"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuxenServer]:
    with sqlite_server(tmp_path_factory.mktemp("members-browser")) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def sign_up(page: Page, server: AuxenServer, email: str, workspace: str, next_url: str) -> None:
    page.goto(f"{server.url}/signup?next={next_url}")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Workspace name").fill(workspace)
    page.get_by_role("button", name="Create account").click()


def test_an_owner_invites_and_removes_a_member(server: AuxenServer, browser: Browser) -> None:
    errors: list[str] = []
    owner_ctx, guest_ctx = browser.new_context(), browser.new_context()
    owner, guest = owner_ctx.new_page(), guest_ctx.new_page()
    for page in (owner, guest):
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    sign_up(owner, server, "browser-owner@example.com", "Team Space", "/members")
    owner.wait_for_url(f"{server.url}/members")
    owner.get_by_label("Email").fill("browser-guest@example.com")
    owner.get_by_role("combobox", name="Role").select_option("member")
    owner.get_by_role("button", name="Create invitation link").click()
    link = owner.locator("code.invite-link").inner_text().strip()
    assert re.fullmatch(rf"{re.escape(server.url)}/invite/[\w-]{{43}}", link), link
    shot(owner, "members-invite")

    # The guest follows the link: signed out, they sign up and come back to it.
    guest.goto(link)
    guest.wait_for_url(re.compile(r".*/login\?next=/invite/.*"))
    sign_up(guest, server, "browser-guest@example.com", "Guest Space", link.split(server.url)[1])
    guest.wait_for_url(link)
    assert "Team Space" in guest.content() and "member" in guest.content()
    shot(guest, "invite-accept")
    guest.get_by_role("button", name="Accept and join").click()
    guest.wait_for_url(f"{server.url}/members")
    assert "browser-owner@example.com" in guest.content()
    assert guest.get_by_role("button", name="Create invitation link").count() == 0  # a member

    # The owner removes them, after confirming.
    owner.goto(f"{server.url}/members")
    row = owner.locator("tr", has_text="browser-guest@example.com")
    row.get_by_role("button", name="Remove").click()
    owner.get_by_role("button", name="Yes, remove browser-guest@example.com").wait_for()
    shot(owner, "members-remove-confirm")
    owner.get_by_role("button", name="Yes, remove browser-guest@example.com").click()
    owner.wait_for_url(f"{server.url}/members")
    assert "browser-guest@example.com" not in owner.locator("table.members").inner_text()

    # The guest's browser is signed out at once.
    guest.goto(f"{server.url}/members")
    guest.wait_for_url(re.compile(r".*/login\?next=/members"))
    owner.goto(f"{server.url}/audit")
    audit = owner.locator("table.audit").inner_text()
    assert "member.remove" in audit and "member.join" in audit and "member.invite" in audit
    shot(owner, "audit")
    assert errors == [], errors
    owner_ctx.close()
    guest_ctx.close()
