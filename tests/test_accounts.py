"""People's accounts through the real pages of a running server: sign up, sign in, sign
out; passwords and sessions stored only as hashes; CSRF and open-redirect refusals.
Runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx2
import pytest
from sqlmodel import col, select

from auxen.store.db import Database
from auxen.store.models import Membership, User, WebSession
from tests.browsers import csrf_of
from tests.servers import AuxenServer

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuxenServer]:
    root = tmp_path_factory.mktemp("accounts")
    srv = AuxenServer(root / "data", database_url).start()
    try:
        yield srv
    finally:
        log = srv.stop_clean()
        assert PASSWORD not in log


def browser(server: AuxenServer, address: str = "192.0.2.1") -> httpx2.Client:
    """A browser at `address` (uvicorn trusts X-Forwarded-For from loopback, as from a
    reverse proxy on the same host), so each test's failures count against its own."""
    return httpx2.Client(
        base_url=server.url,
        follow_redirects=False,
        timeout=30,
        headers={"X-Forwarded-For": address},
    )


def sign_up(
    b: httpx2.Client, email: str, password: str = PASSWORD, **extra: str
) -> httpx2.Response:
    form = b.get("/signup")
    assert form.status_code == 200
    return b.post(
        "/signup",
        data={
            "csrf_token": csrf_of(form),
            "email": email,
            "password": password,
            "workspace": "Research",
            **extra,
        },
    )


def rows(server: AuxenServer, email: str) -> tuple[User | None, list[WebSession], list[Membership]]:
    async def read() -> tuple[User | None, list[WebSession], list[Membership]]:
        db = Database(server.database_url)
        try:
            async with db.system() as s:
                user = (await s.exec(select(User).where(col(User.email) == email))).first()
                if user is None:
                    return None, [], []
                sessions = (
                    await s.exec(select(WebSession).where(col(WebSession.user_id) == user.id))
                ).all()
                members = (
                    await s.exec(select(Membership).where(col(Membership.user_id) == user.id))
                ).all()
                return user, list(sessions), list(members)
        finally:
            await db.close()

    return asyncio.run(read())


def test_sign_up_creates_an_owner_and_signs_in(server: AuxenServer) -> None:
    b = browser(server)
    done = sign_up(b, "Ada@Example.com", next="/account?tab=keys")
    assert done.status_code == 303 and done.headers["location"] == "/account?tab=keys"
    cookie = done.headers["set-cookie"]
    assert "auxen_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    page = b.get("/account")
    assert page.status_code == 200 and "ada@example.com" in page.text and "Research" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    user, sessions, members = rows(server, "ada@example.com")
    assert user is not None and user.password_hash is not None
    assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
    assert [m.role.value for m in members] == ["owner"]
    token = b.cookies.get("auxen_session")
    assert token and len(sessions) == 1 and token.encode() not in sessions[0].token_hash


def test_sign_out_ends_the_session_everywhere(server: AuxenServer) -> None:
    b = browser(server)
    sign_up(b, "grace@example.com")
    stolen = b.cookies.get("auxen_session")
    page = b.get("/account")
    out = b.post("/logout", data={"csrf_token": csrf_of(page)})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    replay = browser(server)
    replay.cookies.set("auxen_session", stolen or "")
    assert replay.get("/account").status_code == 303  # the old cookie is worth nothing
    assert rows(server, "grace@example.com")[1] == []


def test_sign_in_with_the_right_password_only(server: AuxenServer) -> None:
    sign_up(browser(server), "linus@example.com")
    b = browser(server)
    form = b.get("/login?next=/account")
    for email, password in (
        ("linus@example.com", "wrong password!!"),
        ("nobody@example.com", PASSWORD),
        ("not an email", PASSWORD),
    ):
        bad = b.post(
            "/login",
            data={"csrf_token": csrf_of(form), "email": email, "password": password},
        )
        assert bad.status_code == 401 and "wrong email or password" in bad.text
        assert "auxen_session" not in bad.headers.get("set-cookie", "")
    good = b.post(
        "/login",
        data={"csrf_token": csrf_of(form), "email": " LINUS@example.com ", "password": PASSWORD},
    )
    assert good.status_code == 303 and b.get("/account").status_code == 200


@pytest.mark.parametrize(
    ("email", "password", "message"),
    [
        ("short@example.com", "short", "at least 10 characters"),
        ("same@example.com", "same@example.com", "must not be your email"),
        ("no-at-sign", PASSWORD, "enter an email address"),
        ("big@example.com", "x" * 2000, "at most 1024"),
    ],
)
def test_bad_sign_ups_change_nothing(
    server: AuxenServer, email: str, password: str, message: str
) -> None:
    page = sign_up(browser(server), email, password)
    assert page.status_code == 400 and message in page.text
    assert rows(server, email.lower())[0] is None


def test_an_email_signs_up_once(server: AuxenServer) -> None:
    sign_up(browser(server), "dup@example.com")
    again = sign_up(browser(server), "DUP@example.com")
    assert again.status_code == 409 and "already exists" in again.text
    assert len(rows(server, "dup@example.com")[2]) == 1


def test_forms_without_the_csrf_token_are_refused(server: AuxenServer) -> None:
    b = browser(server)
    b.get("/signup")  # the browser has a CSRF cookie, the forged form does not know it
    for path, data in (
        ("/signup", {"email": "csrf@example.com", "password": PASSWORD, "workspace": "x"}),
        ("/login", {"email": "csrf@example.com", "password": PASSWORD}),
        ("/logout", {}),
    ):
        for token in (None, "forged-token-value-1234567890"):
            sent = dict(data, **({"csrf_token": token} if token else {}))
            refused = b.post(path, data=sent)
            assert refused.status_code == 403, (path, refused.text)
    assert rows(server, "csrf@example.com")[0] is None


def test_next_never_leaves_the_site(server: AuxenServer) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:x"):
        b = browser(server)
        done = sign_up(b, f"redirect{abs(hash(target))}@example.com", next=target)
        assert done.status_code == 303 and done.headers["location"] == "/dashboard", target


def test_pages_need_a_session(server: AuxenServer) -> None:
    away = browser(server).get("/account")
    assert away.status_code == 303 and away.headers["location"] == "/login?next=/account"
    assert httpx2.get(f"{server.url}/static/auxen.css").status_code == 200


def _login(b: httpx2.Client, email: str, password: str) -> httpx2.Response:
    form = b.get("/login")
    return b.post(
        "/login", data={"csrf_token": csrf_of(form), "email": email, "password": password}
    )


def test_repeated_failures_slow_down_then_lock_an_account(server: AuxenServer) -> None:
    sign_up(browser(server), "target@example.com")
    b = browser(server, "198.51.100.7")
    for _ in range(3):  # the free failures
        assert _login(b, "target@example.com", "wrong password!!").status_code == 401
    slowed = _login(b, "target@example.com", PASSWORD)  # even the right one must wait
    assert slowed.status_code == 429 and int(slowed.headers["retry-after"]) >= 1
    assert "too many failed attempts" in slowed.text
    assert "auxen_session" not in slowed.headers.get("set-cookie", "")
    time.sleep(int(slowed.headers["retry-after"]) + 0.2)
    assert _login(b, "target@example.com", PASSWORD).status_code == 303  # and resets
    # Hammering without waiting: the tenth failure locks the account for minutes.
    replies = [_login(b, "target@example.com", "wrong password!!") for _ in range(10)]
    assert [r.status_code for r in replies[:3]] == [401] * 3
    assert all(r.status_code == 429 for r in replies[3:])
    assert int(replies[-1].headers["retry-after"]) > 600
    other = browser(server, "198.51.100.8")  # from anywhere: the account is locked
    assert _login(other, "target@example.com", PASSWORD).status_code == 429


def test_one_address_guessing_many_accounts_is_slowed(server: AuxenServer) -> None:
    b = browser(server, "203.0.113.9")
    statuses = [
        _login(b, f"guess{i}@example.com", "wrong password!!").status_code for i in range(12)
    ]
    assert statuses[:10] == [401] * 10 and statuses[10] == 429, statuses
    sign_up(browser(server), "elsewhere@example.com")
    assert (
        _login(browser(server, "203.0.113.10"), "elsewhere@example.com", PASSWORD).status_code
        == 303
    )
