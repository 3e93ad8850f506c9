"""Brute-force limits that concurrency cannot walk through. Fifty wrong guesses sent at
once, split between two server processes on one database (a SQLite file, and
PostgreSQL), are judged as if they came one after another: each is admitted by the
throttle, atomically, before it is evaluated, so only a few are evaluated (401) and the
rest are told to wait (429). Sign-in, the second factor (TOTP and recovery codes),
turning the second factor off, password changes and the token endpoint (guessed
verifiers and guessed client secrets) each get the test."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from auxen.auth import throttle
from auxen.store.db import Database
from auxen.tools.errors import RateLimited
from tests.browsers import Authenticator, csrf_of, enrol_totp, second_step
from tests.servers import AuxenServer

PASSWORD = "a passphrase for throttle tests"
REDIRECT = "http://127.0.0.1:53682/callback"
GUESSES = 50
Pair = tuple[AuxenServer, AuxenServer]


@pytest.fixture(scope="module")
def pair(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Two server processes on one database (and one data directory: one master key)."""
    root = tmp_path_factory.mktemp("throttle")
    first = AuxenServer(root / "data", database_url).start()
    try:
        second = AuxenServer(root / "data", database_url).start()
        try:
            yield first, second
        finally:
            second.stop_clean()
    finally:
        first.stop_clean()


def browser(server: AuxenServer) -> httpx2.Client:
    return httpx2.Client(
        base_url=server.url, follow_redirects=False, timeout=120,
        headers={"X-Forwarded-For": _address()},
    )  # fmt: skip


def _address() -> str:
    return f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(256)}"


def signed_up(server: AuxenServer, email: str) -> httpx2.Client:
    b = browser(server)
    form = b.get("/signup")
    done = b.post(
        "/signup",
        data={"csrf_token": csrf_of(form), "email": email, "password": PASSWORD,
              "workspace": "Throttled"},
    )  # fmt: skip
    assert done.status_code == 303, done.text
    return b


def fire(
    pair: Pair,
    path: str,
    forms: list[dict[str, str]],
    cookies: httpx2.Cookies,
    headers: list[dict[str, str]] | None = None,
) -> list[int]:
    """POST every form at once, alternating between the two servers; the statuses."""

    async def one(i: int, form: dict[str, str]) -> int:
        server = pair[i % 2]
        extra = headers[i] if headers is not None else {"X-Forwarded-For": _address()}
        async with httpx2.AsyncClient(
            base_url=server.url, cookies=cookies, timeout=300, headers=extra
        ) as http:
            return (await http.post(path, data=form)).status_code

    async def every() -> list[int]:
        return list(await asyncio.gather(*(one(i, f) for i, f in enumerate(forms))))

    return asyncio.run(every())


def judged(statuses: list[int], wrong: int, limit: int) -> int:
    """How many guesses were evaluated (answered `wrong`); the rest must have been told
    to wait (429), and the evaluated ones must stay within `limit`."""
    evaluated = statuses.count(wrong)
    print(f"{evaluated} of {len(statuses)} guesses evaluated")  # the figure, with -s
    assert evaluated + statuses.count(429) == len(statuses), statuses
    assert 1 <= evaluated <= limit, (evaluated, statuses)
    return evaluated


def test_fifty_wrong_passwords_at_once(pair: Pair) -> None:
    first, _ = pair
    email = f"signin-{secrets.token_hex(4)}@example.com"
    signed_up(first, email)
    b = browser(first)
    token = csrf_of(b.get("/login"))
    forms = [
        {"csrf_token": token, "email": email, "password": f"wrong guess number {i}"}
        for i in range(GUESSES)
    ]
    judged(fire(pair, "/login", forms, b.cookies), 401, throttle.ACCOUNT.lockout_after)
    # The account is locked now: even the right password waits.
    right = b.post("/login", data={"csrf_token": token, "email": email, "password": PASSWORD})
    assert right.status_code == 429


def test_fifty_wrong_password_changes_at_once(pair: Pair) -> None:
    first, _ = pair
    b = signed_up(first, f"change-{secrets.token_hex(4)}@example.com")
    token = csrf_of(b.get("/account"))
    forms = [
        {
            "csrf_token": token,
            "current_password": f"not my password {i}",
            "new_password": "a brand new passphrase",
        }
        for i in range(GUESSES)
    ]
    statuses = fire(pair, "/account/password", forms, b.cookies)
    judged(statuses, 401, throttle.ACCOUNT.lockout_after)


def _with_two_factor(server: AuxenServer) -> tuple[httpx2.Client, str, Authenticator, list[str]]:
    email = f"mfa-{secrets.token_hex(4)}@example.com"
    b = signed_up(server, email)
    app, codes = enrol_totp(b)
    return b, email, app, codes


def _half_signed_in(server: AuxenServer, email: str) -> tuple[httpx2.Client, str]:
    """A browser past the password, at the second step; its form's CSRF token."""
    b = browser(server)
    form = b.get("/login")
    step = b.post(
        "/login",
        data={"csrf_token": csrf_of(form), "email": email, "password": PASSWORD,
              "next": "/account"},
    )  # fmt: skip
    assert step.headers["location"].startswith("/login/mfa"), step.text
    page = b.get("/login/mfa?next=/account")
    return b, csrf_of(page)


@pytest.mark.parametrize("kind", ["totp", "recovery"])
def test_fifty_wrong_second_factor_codes_at_once(pair: Pair, kind: str) -> None:
    first, _ = pair
    _, email, app, codes = _with_two_factor(first)
    b, token = _half_signed_in(first, email)
    if kind == "totp":
        wrong = app.wrong_code()
        guesses = [wrong] * GUESSES
    else:
        guesses = ["-".join(secrets.token_hex(2) for _ in range(4)) for _ in range(GUESSES)]
        assert not set(guesses) & set(codes)
    forms = [{"csrf_token": token, "code": g, "next": "/account"} for g in guesses]
    judged(fire(pair, "/login/mfa", forms, b.cookies), 401, throttle.ACCOUNT.lockout_after)
    # Locked: the right code waits too (and is not spent by the refusal).
    assert second_step(b, codes[0]).status_code == 429


def test_fifty_wrong_passwords_to_turn_the_second_factor_off(pair: Pair) -> None:
    first, _ = pair
    b, _, app, _ = _with_two_factor(first)
    token = csrf_of(b.get("/account"))
    forms = [
        {"csrf_token": token, "password": f"wrong password {i}", "code": app.wrong_code()}
        for i in range(GUESSES)
    ]
    statuses = fire(pair, "/account/mfa/disable", forms, b.cookies)
    judged(statuses, 401, throttle.ACCOUNT.lockout_after)
    assert "On since" in b.get("/account").text  # still on


def _authorization_code(server: AuxenServer, **metadata: Any) -> dict[str, str]:
    """A registered client and a code for it, consented to by a new person."""
    where = {"X-Forwarded-For": _address()}
    client = httpx2.post(
        f"{server.url}/register",
        json={"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none", **metadata},
        headers=where,
    ).json()
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    b = signed_up(server, f"agent-{secrets.token_hex(4)}@example.com")
    step = b.get(
        "/authorize",
        params={"response_type": "code", "client_id": client["client_id"],
                "redirect_uri": REDIRECT, "code_challenge": challenge.decode().rstrip("="),
                "code_challenge_method": "S256", "resource": f"{server.url}/mcp"},
    )  # fmt: skip
    page = b.get(step.headers["location"])
    request_token = re.search(r'name="request" value="([^"]+)"', page.text)
    workspace = re.search(r'<option value="([^"]+)"', page.text)
    assert request_token and workspace, page.text
    answer = b.post(
        "/oauth/consent",
        data={"csrf_token": csrf_of(page), "request": request_token.group(1),
              "workspace_id": workspace.group(1), "decision": "approve"},
    )  # fmt: skip
    code = re.search(r"code=([^&]+)", answer.headers["location"])
    assert code
    return {**client, "code": code.group(1), "verifier": verifier}


def test_fifty_wrong_verifiers_at_once_from_one_address(pair: Pair) -> None:
    first, _ = pair
    grant = _authorization_code(first)
    form = {"grant_type": "authorization_code", "client_id": grant["client_id"],
            "code": grant["code"], "redirect_uri": REDIRECT}  # fmt: skip
    forms = [{**form, "code_verifier": secrets.token_urlsafe(48)} for _ in range(GUESSES)]
    one_address = [{"X-Forwarded-For": "192.0.2.200"}] * GUESSES
    statuses = fire(pair, "/token", forms, httpx2.Cookies(), one_address)
    judged(statuses, 400, throttle.ADDRESS.free_failures + 10)


def test_fifty_wrong_client_secrets_at_once(pair: Pair) -> None:
    first, _ = pair
    grant = _authorization_code(first, token_endpoint_auth_method="client_secret_post")
    form = {"grant_type": "authorization_code", "client_id": grant["client_id"],
            "code": grant["code"], "redirect_uri": REDIRECT,
            "code_verifier": grant["verifier"]}  # fmt: skip
    forms = [{**form, "client_secret": secrets.token_hex(32)} for _ in range(GUESSES)]
    statuses = fire(pair, "/token", forms, httpx2.Cookies())  # from fifty addresses
    judged(statuses, 401, throttle.CLIENT.lockout_after)
    # Locked out: even the right secret waits, and the code is not spent by it.
    right = httpx2.post(
        f"{first.url}/token", data={**form, "client_secret": grant["client_secret"]}
    )
    assert right.status_code == 429


# -- the mechanism itself: two engines (as two processes) racing on one counter ----------


def test_admission_is_atomic_across_connections(database_url: str) -> None:
    async def race() -> tuple[int, RateLimited | None]:
        setup = Database(database_url)
        await setup.migrate()
        await setup.close()
        engines = [Database(database_url), Database(database_url)]
        subject = {f"login:account:race-{secrets.token_hex(4)}": throttle.ACCOUNT}
        evaluated = 0

        async def guess(i: int) -> None:
            nonlocal evaluated
            try:
                attempt = await throttle.Throttle(engines[i % 2]).admit(subject)
            except RateLimited:
                return
            evaluated += 1  # here the password would be checked, and found wrong
            await attempt.failed()

        try:
            await asyncio.gather(*(guess(i) for i in range(GUESSES)))
            try:
                await throttle.Throttle(engines[0]).admit(subject)
                after = None
            except RateLimited as exc:
                after = exc
        finally:
            for db in engines:
                await db.close()
        return evaluated, after

    evaluated, after = asyncio.run(race())
    assert 1 <= evaluated <= throttle.ACCOUNT.lockout_after, evaluated
    assert after is not None and after.retry_after_s > 60  # every refusal counted: locked
