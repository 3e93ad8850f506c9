"""What a person's browser and authenticator app do, for tests that drive the real pages
over HTTP: read the CSRF token out of a form, scan the TOTP set-up page, produce codes."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pyotp
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.servers import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = REPO / "build" / "screenshots"


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's headless Chromium, driven by Playwright (`make test` installs it)."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium package")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def shot(page: Page, name: str) -> None:
    """A full-page screenshot, kept as a test artifact under build/screenshots/."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def csrf_of(page: httpx2.Response | str) -> str:
    html = page if isinstance(page, str) else page.text
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def hidden(page: httpx2.Response, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


class Authenticator:
    """An authenticator app holding one secret. Auxen accepts each 30-second step once
    (and one step either side of now), so `code()` hands out the next unused step and
    waits for the clock only when it has to."""

    def __init__(self, secret: str) -> None:
        self.totp = pyotp.TOTP(secret)
        self.last_step = -1

    def code(self) -> str:
        # The current step, or the next unused one: the server accepts it until the step
        # after it ends, so a step boundary between here and the server cannot fail it.
        step = max(int(time.time() // 30), self.last_step + 1)
        while step > int(time.time() // 30) + 1:
            time.sleep(0.5)
        self.last_step = step
        return str(self.totp.at(step * 30))

    def wrong_code(self) -> str:
        """A well-formed code that matches no step Auxen would accept now."""
        now = int(time.time() // 30)
        valid = {self.totp.at(s * 30) for s in range(now - 2, now + 3)}
        return next(c for c in (f"{n:06d}" for n in range(123456, 999999, 7919)) if c not in valid)


def enrol_totp(b: httpx2.Client) -> tuple[Authenticator, list[str]]:
    """Turn two-factor authentication on from the account page of a signed-in browser:
    scan the set-up page, confirm a code; the app and the recovery codes shown."""
    account = b.get("/account")
    assert account.status_code == 200 and "Set up two-factor" in account.text, account.text
    setup = b.post("/account/mfa/setup", data={"csrf_token": csrf_of(account)})
    assert setup.status_code == 200, setup.text
    assert "<svg" in setup.text and "<script" not in setup.text  # the QR code, inline
    secret = re.search(r'<code class="secret">([A-Z2-7]+)</code>', setup.text)
    assert secret, setup.text
    app = Authenticator(secret.group(1))
    done = b.post(
        "/account/mfa/enable",
        data={"csrf_token": csrf_of(setup), "token": hidden(setup, "token"), "code": app.code()},
    )
    assert done.status_code == 200, done.text
    return app, recovery_codes_in(done)


def recovery_codes_in(page: httpx2.Response) -> list[str]:
    codes = re.findall(r"<li><code>([a-z0-9-]{19})</code></li>", page.text)
    assert len(codes) == 10, page.text
    return codes


def second_step(b: httpx2.Client, code: str, next_url: str = "/account") -> httpx2.Response:
    """Answer the sign-in's second step (the browser already passed the password)."""
    form = b.get(f"/login/mfa?next={next_url}")
    assert form.status_code == 200, form.text
    return b.post("/login/mfa", data={"csrf_token": csrf_of(form), "code": code, "next": next_url})
