"""Two-factor authentication through the real pages of a running server, with a real
TOTP app (pyotp) on the person's side: enrol with the QR page, sign in with a code or a
recovery code, codes that work once, guessing that is slowed then locked out, turning it
off. The secret and the recovery codes are never stored readable. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from sqlmodel import col, select

from auxen.store.db import Database
from auxen.store.models import RecoveryCode, User
from tests.browsers import (
    Authenticator,
    csrf_of,
    enrol_totp,
    hidden,
    recovery_codes_in,
    second_step,
)
from tests.servers import AuxenServer
from tests.test_accounts import PASSWORD, _login, browser, sign_up


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuxenServer]:
    root = tmp_path_factory.mktemp("mfa")
    srv = AuxenServer(root / "data", database_url).start()
    try:
        yield srv
    finally:
        srv.stop_clean()


def stored(server: AuxenServer, email: str) -> tuple[User, list[RecoveryCode]]:
    async def read() -> tuple[User, list[RecoveryCode]]:
        db = Database(server.database_url)
        try:
            async with db.system() as s:
                user = (await s.exec(select(User).where(col(User.email) == email))).one()
                codes = await s.exec(
                    select(RecoveryCode).where(col(RecoveryCode.user_id) == user.id)
                )
                return user, list(codes.all())
        finally:
            await db.close()

    return asyncio.run(read())


def enrolled(server: AuxenServer, email: str, address: str) -> tuple[Authenticator, list[str]]:
    b = browser(server, address)
    assert sign_up(b, email).status_code == 303
    return enrol_totp(b)


def signed_in(
    server: AuxenServer, email: str, address: str, code: str
) -> tuple[httpx2.Client, httpx2.Response]:
    """A new browser at `address` that gives the password, then `code`; the answer."""
    b = browser(server, address)
    assert _login(b, email, PASSWORD).status_code == 303
    return b, second_step(b, code)


def test_enrolment_then_every_sign_in_needs_a_code(server: AuxenServer) -> None:
    b = browser(server, "192.0.2.21")
    sign_up(b, "ada2fa@example.com")
    account = b.get("/account")
    setup = b.post("/account/mfa/setup", data={"csrf_token": csrf_of(account)})
    app = Authenticator(
        setup.text.split('<code class="secret">')[1].split("</code>")[0]
    )  # the key shown beside the QR code, for apps without a camera
    wrong = b.post(
        "/account/mfa/enable",
        data={"csrf_token": csrf_of(setup), "token": hidden(setup, "token"),
              "code": app.wrong_code()},
    )  # fmt: skip
    assert wrong.status_code == 400 and "does not match" in wrong.text
    assert stored(server, "ada2fa@example.com")[0].totp_secret_sealed is None  # still off
    enrolment_code = app.code()
    done = b.post(
        "/account/mfa/enable",
        data={"csrf_token": csrf_of(wrong), "token": hidden(wrong, "token"),
              "code": enrolment_code},
    )  # fmt: skip
    assert done.status_code == 200 and "shown only now" in done.text
    user, codes = stored(server, "ada2fa@example.com")
    assert user.totp_secret_sealed is not None and user.totp_enabled_at is not None
    assert app.totp.secret.encode() not in user.totp_secret_sealed
    assert len(codes) == 10 and all(len(c.code_hash) == 32 for c in codes)
    if server.database_url.startswith("sqlite"):
        raw = Path(server.database_url.removeprefix("sqlite:///")).read_bytes()
        assert app.totp.secret.encode() not in raw

    b.post("/logout", data={"csrf_token": csrf_of(b.get("/account"))})
    signed = _login(b, "ada2fa@example.com", PASSWORD)
    assert signed.status_code == 303 and signed.headers["location"].startswith("/login/mfa")
    assert "auxen_session" not in signed.headers.get("set-cookie", "")
    assert b.get("/account").status_code == 303  # the password alone opens nothing
    assert second_step(b, app.wrong_code()).status_code == 401
    replayed = second_step(b, enrolment_code)  # right code, but already spent
    assert replayed.status_code == 401 and "already used" in replayed.text
    ok = second_step(b, app.code(), next_url="/account?tab=security")
    assert ok.status_code == 303 and ok.headers["location"] == "/account?tab=security"
    page = b.get("/account")
    assert page.status_code == 200 and "On since" in page.text
    assert "10 unused recovery codes" in page.text


def test_a_recovery_code_signs_in_once(server: AuxenServer) -> None:
    _, codes = enrolled(server, "lost-phone@example.com", "192.0.2.22")
    forgiving = codes[0].upper().replace("-", " ")
    b, answer = signed_in(server, "lost-phone@example.com", "192.0.2.22", forgiving)
    assert answer.status_code == 303
    assert "9 unused recovery codes" in b.get("/account").text
    again, spent = signed_in(server, "lost-phone@example.com", "192.0.2.22", codes[0])
    assert spent.status_code == 401
    assert second_step(again, codes[1]).status_code == 303
    _, rows = stored(server, "lost-phone@example.com")
    assert sum(r.used_at is not None for r in rows) == 2
    assert not any(c.encode() in r.code_hash for c in codes for r in rows)


def test_new_recovery_codes_replace_the_old_ones(server: AuxenServer) -> None:
    app, old = enrolled(server, "fresh-codes@example.com", "192.0.2.23")
    b, _ = signed_in(server, "fresh-codes@example.com", "192.0.2.23", old[0])
    page = b.get("/account")
    made = b.post(
        "/account/mfa/recovery-codes", data={"csrf_token": csrf_of(page), "code": app.code()}
    )
    assert made.status_code == 200 and "earlier codes no longer work" in made.text
    new = recovery_codes_in(made)
    assert not set(new) & set(old)
    other, refused = signed_in(server, "fresh-codes@example.com", "192.0.2.23", old[1])
    assert refused.status_code == 401
    assert second_step(other, new[0]).status_code == 303


def test_guessing_codes_is_slowed_then_locked_out(server: AuxenServer) -> None:
    app, codes = enrolled(server, "guessed@example.com", "192.0.2.24")
    thief = browser(server, "198.51.100.24")
    assert _login(thief, "guessed@example.com", PASSWORD).status_code == 303  # has the password
    statuses = [second_step(thief, app.wrong_code()).status_code for _ in range(3)]
    assert statuses == [401, 401, 401]
    slowed = second_step(thief, app.code())  # even a right code must wait now
    assert slowed.status_code == 429 and int(slowed.headers["retry-after"]) >= 1
    replies = [second_step(thief, f"{n:06d}") for n in range(6)]
    assert all(r.status_code == 429 for r in replies)
    assert int(replies[-1].headers["retry-after"]) > 600  # locked for minutes
    # From anywhere: the second factor is locked.
    assert signed_in(server, "guessed@example.com", "192.0.2.24", codes[0])[1].status_code == 429


def test_turning_it_off_needs_the_password_and_a_code(server: AuxenServer) -> None:
    _, codes = enrolled(server, "off@example.com", "192.0.2.25")
    b, _ = signed_in(server, "off@example.com", "192.0.2.25", codes[0])
    page = b.get("/account")
    wrong = b.post(
        "/account/mfa/disable",
        data={"csrf_token": csrf_of(page), "password": "not my password", "code": codes[1]},
    )
    assert wrong.status_code == 401 and "wrong password" in wrong.text
    no_code = b.post(
        "/account/mfa/disable",
        data={"csrf_token": csrf_of(page), "password": PASSWORD, "code": "nope-nope-nope-nope"},
    )
    assert no_code.status_code == 401
    assert stored(server, "off@example.com")[0].totp_secret_sealed is not None
    off = b.post(
        "/account/mfa/disable",
        data={"csrf_token": csrf_of(page), "password": PASSWORD, "code": codes[1]},
    )
    assert off.status_code == 303
    user, rows = stored(server, "off@example.com")
    assert user.totp_secret_sealed is None and rows == []
    assert (
        _login(browser(server, "192.0.2.25"), "off@example.com", PASSWORD).headers["location"]
        == "/dashboard"
    )  # straight in again


def test_second_factor_forms_refuse_forgeries(server: AuxenServer) -> None:
    b = browser(server, "192.0.2.26")
    sign_up(b, "forged2fa@example.com")
    b.get("/account")
    for path in ("/account/mfa/setup", "/account/mfa/enable", "/account/mfa/disable",
                 "/account/mfa/recovery-codes", "/account/apps/revoke", "/login/mfa"):  # fmt: skip
        assert b.post(path, data={"code": "123456"}).status_code == 403, path
    stranger = browser(server, "192.0.2.27")
    assert stranger.get("/login/mfa").headers["location"].startswith("/login")
    stranger.cookies.set("auxen_mfa", "forged-challenge-token")
    assert stranger.get("/login/mfa").status_code == 303
    # An enrolment page minted for one person cannot switch on another's second factor.
    setup = b.post("/account/mfa/setup", data={"csrf_token": csrf_of(b.get("/account"))})
    token = hidden(setup, "token")
    other = browser(server, "192.0.2.28")
    sign_up(other, "victim2fa@example.com")
    stolen = other.post(
        "/account/mfa/enable",
        data={"csrf_token": csrf_of(other.get("/account")), "token": token, "code": "123456"},
    )
    assert stolen.status_code == 400 and "expired" in stolen.text
    assert stored(server, "victim2fa@example.com")[0].totp_secret_sealed is None


def test_codes_are_checked_with_drift_and_never_twice() -> None:
    from auxen.auth import totp

    secret = totp.new_secret()
    app = Authenticator(secret)
    now = 1_800_000_015.0
    step = int(now // 30)
    assert totp.matching_step(secret, app.totp.at(now), now) == step
    assert totp.matching_step(secret, app.totp.at(now - 30), now) == step - 1
    assert totp.matching_step(secret, app.totp.at(now + 30), now) == step + 1
    assert totp.matching_step(secret, app.totp.at(now + 90), now) is None
    for junk in ("", "12345", "1234567", "abcdef", "١٢٣٤٥٦"):
        assert totp.matching_step(secret, junk, now) is None
    codes = totp.new_recovery_codes()
    assert len(set(codes)) == 10 and all(len(c) == 19 for c in codes)
    assert totp.recovery_hash(codes[0].upper().replace("-", "")) == totp.recovery_hash(codes[0])
    assert "<svg" in totp.qr_svg(totp.provisioning_uri(secret, "a@example.com"))
    assert httpx2.URL(totp.provisioning_uri(secret, "a@example.com")).scheme == "otpauth"
