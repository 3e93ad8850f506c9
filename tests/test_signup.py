"""Sign-up where email proof is on (the production default): the same answer whether or
not an address has an account (its owner is emailed instead), a link that proves the
address before the account can buy credits, invite, make keys or connect an agent, a
later sign-up that takes an unconfirmed account back from whoever opened it, and limits
per address and per client address. Mail goes to a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from auxen.config import Settings
from tests.browsers import csrf_of
from tests.ledger_checks import sql
from tests.notify_receivers import Inbox, wait_until
from tests.servers import AuxenServer
from tests.test_oauth import REDIRECT, Flow, Person

PASSWORD = "a passphrase for sign-up tests"
LINK = re.compile(r"(http://\S+/signup/confirm\?token=\S+)")


@pytest.fixture(scope="module")
def inbox() -> Iterator[Inbox]:
    box = Inbox().start()
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="module")
def server(inbox: Inbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuxenServer]:
    root = tmp_path_factory.mktemp("signup")
    srv = AuxenServer(
        root / "data",
        f"sqlite:///{root / 'auxen.db'}",
        extra_env={
            **inbox.env(),
            "AUXEN_EMAIL_VERIFICATION": "true",
            "AUXEN_SIGNUPS_PER_ADDRESS_PER_HOUR": "4",
        },
    ).start()
    try:
        yield srv
    finally:
        log = srv.stop_clean()
        assert PASSWORD not in log and "/signup/confirm?token=" not in log


def browser(server: AuxenServer, address: str | None = None) -> httpx2.Client:
    """A browser at an address of its own (the server believes X-Forwarded-For from
    loopback), so each sign-up counts against its own limit unless a test says otherwise."""
    where = address or f"198.51.100.{secrets.randbelow(250) + 1}"
    return httpx2.Client(
        base_url=server.url, follow_redirects=False, timeout=60,
        headers={"X-Forwarded-For": where},
    )  # fmt: skip


def sign_up(b: httpx2.Client, email: str, password: str = PASSWORD) -> httpx2.Response:
    form = b.get("/signup")
    assert form.status_code == 200
    return b.post(
        "/signup",
        data={"csrf_token": csrf_of(form), "email": email, "password": password,
              "workspace": "Lab", "next": "/account"},
    )  # fmt: skip


def sign_in(b: httpx2.Client, email: str, password: str = PASSWORD) -> httpx2.Response:
    form = b.get("/login")
    return b.post(
        "/login",
        data={"csrf_token": csrf_of(form), "email": email, "password": password,
              "next": "/account"},
    )  # fmt: skip


def mails(inbox: Inbox, address: str, count: int) -> list[str]:
    """The texts of the account mails (confirmation links, sign-up notes) to `address`,
    once `count` of them have arrived."""

    def account_mails() -> list[str]:
        return [
            m.text for m in inbox.to(address) if "sign up" in m.subject or "Confirm" in m.subject
        ]

    inbox.wait_for(lambda: len(account_mails()) >= count, timeout=60)
    return account_mails()


def confirm(b: httpx2.Client, text: str) -> httpx2.Response:
    """Follow the mail's link, and press the button on the page it opens."""
    found = LINK.search(text)
    assert found, text
    page = b.get(found.group(1).removeprefix(str(b.base_url).rstrip("/")))
    assert page.status_code == 200 and "Confirm my address" in page.text, page.text
    token = re.search(r'name="token" value="([^"]+)"', page.text)
    assert token
    return b.post("/signup/confirm", data={"csrf_token": csrf_of(page), "token": token.group(1)})


def users(server: AuxenServer, email: str) -> int:
    rows = sql(server.database_url, 'SELECT COUNT(*) FROM "user" WHERE email = :e', e=email)
    return int(rows[0][0])


def test_sign_up_answers_alike_whether_or_not_the_address_has_an_account(
    server: AuxenServer, inbox: Inbox
) -> None:
    first = sign_up(browser(server), "taken@example.com")
    assert first.status_code == 303 and first.headers["location"] == "/signup/sent"
    confirm(browser(server), mails(inbox, "taken@example.com", 1)[0])

    again, fresh = browser(server), browser(server)
    taken_answer = sign_up(again, "taken@example.com", "another passphrase entirely")
    new_answer = sign_up(fresh, "brand-new@example.com")
    for answer in (taken_answer, new_answer):
        assert answer.status_code == 303 and answer.headers["location"] == "/signup/sent"
        assert answer.content == b"" and not answer.cookies  # nobody is signed in
    assert dict(again.cookies).keys() == dict(fresh.cookies).keys()
    assert again.get("/signup/sent").text == fresh.get("/signup/sent").text
    for b in (again, fresh):
        assert b.get("/account").headers["location"].startswith("/login")
    # What differs went by email: the owner hears someone tried; the new address gets a link.
    owner_mail = mails(inbox, "taken@example.com", 2)[1]
    assert "already" in owner_mail and "/signup/confirm" not in owner_mail
    assert LINK.search(mails(inbox, "brand-new@example.com", 1)[0])
    assert users(server, "taken@example.com") == 1
    assert sign_in(browser(server), "taken@example.com").status_code == 303  # unchanged
    # A refused sign-up (a weak password) is refused alike for both addresses too.
    weak = [sign_up(browser(server), e, "short") for e in ("taken@example.com", "x@example.com")]
    assert [w.status_code for w in weak] == [400, 400]


def test_an_unconfirmed_account_cannot_buy_invite_make_keys_or_connect_an_agent(
    server: AuxenServer, inbox: Inbox
) -> None:
    email = "unproven@example.com"
    b = browser(server)
    assert sign_up(b, email).status_code == 303
    first_link = mails(inbox, email, 1)[0]
    assert sign_in(b, email).status_code == 303  # signing in works; these acts do not
    refusals = _acts(server, b)
    for name, reply in refusals.items():
        assert reply.status_code == 403, (name, reply.status_code, reply.text[:300])
        assert "confirm your email address" in reply.text.lower(), name
    account = b.get("/account")
    assert "not confirmed" in account.text
    resent = b.post("/account/confirm-email", data={"csrf_token": csrf_of(account)})
    assert resent.status_code == 303
    second_link = mails(inbox, email, 2)[1]
    assert LINK.search(second_link) and LINK.search(first_link)
    # The sign-in from a new browser was notified, but an address nobody has proven gets
    # nothing but its confirmation links.
    waiting = "SELECT id FROM notification WHERE fanned_out_at IS NULL"
    wait_until(lambda: not sql(server.database_url, waiting))
    assert sql(server.database_url, "SELECT event FROM notification")
    delivered = "SELECT COUNT(*) FROM notification_delivery WHERE target = :e"
    assert sql(server.database_url, delivered, e=email) == [(0,)]
    done = confirm(b, second_link)
    assert done.status_code == 303 and done.headers["location"] == "/account"
    allowed = _acts(server, b)
    assert "confirm your email" not in allowed["checkout"].text.lower()
    assert allowed["key"].status_code == 200 and "auxen_live_" in allowed["key"].text
    assert allowed["invite"].status_code == 201, allowed["invite"].text[:300]
    assert allowed["consent"].status_code == 303
    assert allowed["consent"].headers["location"].startswith(REDIRECT)
    assert "code=" in allowed["consent"].headers["location"]
    # The older link still opens, and changes nothing now.
    assert confirm(b, first_link).status_code == 303


def _acts(server: AuxenServer, b: httpx2.Client) -> dict[str, httpx2.Response]:
    """Buy credits, make an account key, invite someone, allow an agent in."""
    billing = b.get("/billing")
    checkout = b.post(
        "/billing/checkout", data={"csrf_token": csrf_of(billing), "amount_usd": "20"}
    )
    keys = b.get("/keys")
    key = b.post("/keys", data={"csrf_token": csrf_of(keys), "name": "ci"})
    members = b.get("/members")
    invite = b.post(
        "/members/invite",
        data={"csrf_token": csrf_of(members), "email": f"guest-{secrets.token_hex(3)}@example.com",
              "role": "member"},
    )  # fmt: skip
    person = Person.__new__(Person)
    person.server, person.http = server, b
    flow = Flow(server, person)
    step = b.get(flow.authorize_url())
    page = b.get(step.headers["location"])
    assert page.status_code == 200, page.text
    workspace = re.search(r'<option value="([^"]+)"', page.text)
    request_token = re.search(r'name="request" value="([^"]+)"', page.text)
    assert request_token
    consent = b.post(
        "/oauth/consent",
        data={"csrf_token": csrf_of(page), "request": request_token.group(1),
              "workspace_id": workspace.group(1) if workspace else "", "decision": "approve"},
    )  # fmt: skip
    if workspace is None:  # no Allow button (nor workspace choice) while unconfirmed
        assert ">Allow<" not in page.text
    return {"checkout": checkout, "key": key, "invite": invite, "consent": consent}


def test_a_later_sign_up_takes_an_unconfirmed_account_back_from_whoever_opened_it(
    server: AuxenServer, inbox: Inbox
) -> None:
    email = "victim@example.com"
    squatter = browser(server)
    assert sign_up(squatter, email, "the squatter's passphrase").status_code == 303
    assert sign_in(squatter, email, "the squatter's passphrase").status_code == 303
    assert squatter.get("/account").status_code == 200
    owner = browser(server)
    assert sign_up(owner, email).status_code == 303  # the same answer as any sign-up
    links = mails(inbox, email, 2)
    done = confirm(owner, links[1])  # the owner follows the link their sign-up sent
    assert done.status_code == 303 and "confirmed=1" in done.headers["location"]
    assert squatter.get("/account").headers["location"].startswith("/login")
    assert sign_in(browser(server), email, "the squatter's passphrase").status_code == 401
    assert sign_in(owner, email).status_code == 303
    assert "not confirmed" not in owner.get("/account").text
    assert users(server, email) == 1


def test_sign_ups_are_limited_per_address_and_per_client_address(
    server: AuxenServer, inbox: Inbox
) -> None:
    email = "popular@example.com"
    answers = [sign_up(browser(server), email).status_code for _ in range(6)]
    assert answers == [303] * 5 + [429]
    limited = sign_up(browser(server), email)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 60
    assert "too many" in limited.text
    one_place = "203.0.113.99"
    made = [
        sign_up(browser(server, one_place), f"from-one-place-{i}@example.com").status_code
        for i in range(5)
    ]
    assert made == [303] * 4 + [429]
    assert users(server, "from-one-place-4@example.com") == 0
    mails(inbox, email, 1)
    assert len(inbox.to(email)) <= 5


def test_confirmation_links_are_sealed_and_kept_nowhere(
    server: AuxenServer, inbox: Inbox, tmp_path: Path
) -> None:
    email = "sealed@example.com"
    assert sign_up(browser(server), email).status_code == 303
    text = mails(inbox, email, 1)[0]
    found = LINK.search(text)
    assert found
    token = found.group(1).split("token=", 1)[1]
    tampered = browser(server).get(f"/signup/confirm?token={token[:-6]}AAAAAA")
    assert tampered.status_code == 400 and "expired or is not valid" in tampered.text
    b = browser(server)
    page = b.get("/signup/confirm?token=" + token)
    forged = b.post("/signup/confirm", data={"csrf_token": csrf_of(page), "token": token[:40]})
    assert forged.status_code == 400
    assert users(server, email) == 1
    database = Path(server.database_url.removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    assert token.encode() not in stored and token[:32].encode() not in stored


def test_email_proof_is_on_by_default_in_production_only() -> None:
    key = "bWFzdGVyLWtleS1mb3ItdGVzdHMtb25seS0zMmJ5dGVz"
    assert Settings(env="production", master_key=key).requires_email_proof
    assert not Settings(
        env="production", master_key=key, email_verification=False
    ).requires_email_proof
    assert not Settings().requires_email_proof
    assert Settings(email_verification=True).requires_email_proof
