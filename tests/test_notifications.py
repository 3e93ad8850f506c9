"""Notifications end to end: real `auxen serve` processes, a real SMTP server (aiosmtpd)
and a real webhook receiver. Events are told by email and by signed webhooks, retried
with backoff and logged; preferences route them (owners always get security events);
a server killed between the event and its delivery delivers it once after a restart;
two workers on one database never deliver one notification twice (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from auxen.auth.sealing import seal
from auxen.config import Settings
from auxen.notify import Event, EventType, notify
from auxen.notify.worker import NotificationWorker
from auxen.store.db import Database
from auxen.store.models import Membership, Role, User, WebhookEndpoint, Workspace
from tests.browsers import csrf_of, enrol_totp
from tests.ledger_checks import sql
from tests.notify_receivers import (
    LOOPBACK_RECEIVERS,
    Inbox,
    WebhookReceiver,
    verify_signature,
    wait_until,
)
from tests.servers import AuxenServer

PASSWORD = "correct horse battery staple"
FAST = {"AUXEN_NOTIFY_POLL_S": "0.2", "AUXEN_NOTIFY_BACKOFF_S": "0.5"}


@dataclass
class World:
    server: AuxenServer
    inbox: Inbox
    hooks: WebhookReceiver


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("notify")
    inbox = Inbox().start()
    hooks = WebhookReceiver()
    server = AuxenServer(
        root / "data",
        f"sqlite:///{root / 'data' / 'auxen.db'}",
        extra_env={**inbox.env(), **FAST, **LOOPBACK_RECEIVERS, "AUXEN_NOTIFY_MAX_ATTEMPTS": "4"},
    ).start()
    try:
        yield World(server, inbox, hooks)
    finally:
        server.stop_clean()
        hooks.stop()
        inbox.stop()


def deliveries(http: httpx2.Client) -> list[dict[str, Any]]:
    listed = http.get("/v1/notifications/deliveries")
    assert listed.status_code == 200, listed.text
    rows: list[dict[str, Any]] = listed.json()["data"]
    return rows


def test_a_new_key_is_told_by_email_and_by_a_signed_webhook_retried_until_it_answers(
    world: World,
) -> None:
    ws, key = world.server.workspace("owner@keys.example")
    http = world.server.client(key)
    made = http.post(
        "/v1/notifications/webhooks", json={"url": world.hooks.url, "events": ["api_key_created"]}
    )
    assert made.status_code == 201, made.text
    endpoint, secret = made.json()["id"], made.json()["secret"]
    assert secret.startswith("whsec_") and made.json()["events"] == ["api_key_created"]
    assert http.get("/v1/notifications/webhooks").json()["data"][0].get("secret") is None

    world.hooks.fail_next = 2  # the receiver is down for two tries
    started = time.time()
    new = http.post("/v1/keys", json={"name": "ci deploy"})
    assert new.status_code == 201
    assert time.time() - started < 2  # delivery (and its retries) never held up the request
    key_id, plaintext = new.json()["id"], new.json()["key"]

    wait_until(lambda: len(world.hooks.accepted()) == 1)
    posts = [p for p in world.hooks.posts if json.loads(p.body)["data"]["key_id"] == key_id]
    assert [p.status for p in posts] == [500, 500, 204]
    assert len({p.headers["auxen-event-id"] for p in posts}) == 1  # one event, retried
    assert posts[1].at - posts[0].at >= 0.4 and posts[2].at - posts[1].at >= 0.9  # backoff
    for post in posts:
        verify_signature(post, secret)
    body = json.loads(posts[-1].body)
    assert body["type"] == "api_key_created" and body["workspace_id"] == ws
    assert body["data"]["name"] == "ci deploy" and body["data"]["kind"] == "account"
    assert plaintext not in posts[-1].body.decode()

    world.inbox.wait_for(lambda: len(world.inbox.to("owner@keys.example")) == 1)
    (mail,) = world.inbox.to("owner@keys.example")
    assert key_id in mail.subject and key_id in mail.text and plaintext not in mail.text
    assert mail.message["From"] == "Auxen <notify@auxen.test>"

    wait_until(lambda: all(d["state"] != "pending" for d in deliveries(http)))
    log = {d["channel"]: d for d in deliveries(http)}
    assert log["webhook"]["target"] == endpoint and log["webhook"]["state"] == "delivered"
    assert [(a["ok"], a["status_code"]) for a in log["webhook"]["attempts"]] == [
        (False, 500),
        (False, 500),
        (True, 204),
    ]
    assert log["email"]["target"] == "owner@keys.example"
    assert log["email"]["state"] == "delivered" and len(log["email"]["attempts"]) == 1
    # Another workspace sees none of it.
    _, other = world.server.workspace("someone@else.example")
    assert deliveries(world.server.client(other)) == []


def test_members_see_only_the_host_of_webhook_urls_and_delivery_targets(world: World) -> None:
    """A webhook URL is often a capability (a chat app's incoming hook): owners and admins
    see it whole, members its host only, in the endpoint list and the delivery log."""
    _, key = world.server.workspace("owner@capability.example")
    secret_path = "/services/T0CAPABILITY/B0CAPABILITY/only-for-admins"
    receiver = WebhookReceiver()
    with world.server.client(key) as owner:
        made = owner.post("/v1/notifications/webhooks", json={"url": receiver.url + secret_path})
        assert made.status_code == 201, made.text
        keys = {
            role: owner.post("/v1/keys", json={"name": role, "role": role}).json()["key"]
            for role in ("admin", "member")
        }
        wait_until(lambda: any(d["attempts"] for d in deliveries(owner)))
    with world.server.client(keys["admin"]) as admin:
        (whole,) = admin.get("/v1/notifications/webhooks").json()["data"]
        assert whole["url"].endswith(secret_path) and whole["host"] == "127.0.0.1"
        assert any(d["target"] == "owner@capability.example" for d in deliveries(admin))
    with world.server.client(keys["member"]) as member:
        listed = member.get("/v1/notifications/webhooks")
        log = member.get("/v1/notifications/deliveries")
        assert listed.status_code == 200 and log.status_code == 200
        (host_only,) = listed.json()["data"]
        assert host_only["url"] is None and host_only["host"] == "127.0.0.1"
        for text in (listed.text, log.text):
            assert "CAPABILITY" not in text and "only-for-admins" not in text
            assert "owner@capability.example" not in text
        hooks = [d for d in log.json()["data"] if d["channel"] == "webhook"]
        mails = [d for d in log.json()["data"] if d["channel"] == "email"]
        assert hooks and all(d["host"] == "127.0.0.1" for d in hooks)
        assert mails and all(d["target"] == "capability.example" for d in mails)
    receiver.stop()


def test_a_receiver_that_never_answers_is_given_up_after_the_last_try(world: World) -> None:
    _, key = world.server.workspace("owner@down.example")
    http = world.server.client(key)
    gone = WebhookReceiver()
    gone.stop()  # nothing listens there any more
    assert http.post("/v1/notifications/webhooks", json={"url": gone.url}).status_code == 201
    assert http.post("/v1/keys", json={"name": "x"}).status_code == 201
    wait_until(lambda: any(d["state"] == "failed" for d in deliveries(http)), timeout=30)
    failed = next(d for d in deliveries(http) if d["channel"] == "webhook")
    assert len(failed["attempts"]) == 4 and not any(a["ok"] for a in failed["attempts"])
    assert "could not reach" in failed["last_error"]
    # The product still works: the email of the same event went out.
    assert next(d for d in deliveries(http) if d["channel"] == "email")["state"] == "delivered"


def test_preferences_route_events_but_owners_always_get_security_events(world: World) -> None:
    _, key = world.server.workspace("owner@prefs.example")
    http = world.server.client(key)
    prefs = http.get("/v1/notifications/preferences").json()
    assert prefs["email_enabled"] is True
    assert prefs["events"]["instance_failed"] == {"email": ["owner"], "webhook": True,
                                                  "security": False}  # fmt: skip
    assert prefs["events"]["security_incident"]["security"] is True
    hooks = WebhookReceiver()
    try:
        assert http.post("/v1/notifications/webhooks", json={"url": hooks.url}).status_code == 201
        changed = http.put(
            "/v1/notifications/preferences",
            json={"events": {"api_key_created": {"email": [], "webhook": False}}},
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["events"]["api_key_created"]["email"] == []
        assert http.post("/v1/keys", json={"name": "quiet"}).status_code == 201
        # Security event: the owner is emailed anyway; no webhook, as asked.
        world.inbox.wait_for(lambda: len(world.inbox.to("owner@prefs.example")) == 1)
        time.sleep(1.0)
        assert hooks.posts == []
        assert {d["channel"] for d in deliveries(http)} == {"email"}
    finally:
        hooks.stop()


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/notifications/preferences", {"events": {"nope": {"email": [], "webhook": True}}},
         "events.nope.[key]"),
        ("/v1/notifications/preferences",
         {"events": {"instance_failed": {"email": ["boss"], "webhook": True}}},
         "events.instance_failed.email.0"),
        ("/v1/notifications/webhooks", {"url": "http://hooks.example/x"}, "url"),
        ("/v1/notifications/webhooks", {"url": "https://u:p@hooks.example/x"}, "url"),
        ("/v1/notifications/webhooks", {"url": "https://hooks.example/x", "events": ["nope"]},
         "events.0"),
    ],
)  # fmt: skip
def test_bad_settings_are_refused_and_change_nothing(
    world: World, path: str, body: dict[str, Any], param: str
) -> None:
    _, key = world.server.workspace(f"bad-{abs(hash(json.dumps(body)))}@prefs.example")
    http = world.server.client(key)
    before = (http.get("/v1/notifications/preferences").json(),
              http.get("/v1/notifications/webhooks").json())  # fmt: skip
    method = http.put if path.endswith("preferences") else http.post
    refused = method(path, json=body)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == param
    after = (http.get("/v1/notifications/preferences").json(),
             http.get("/v1/notifications/webhooks").json())  # fmt: skip
    assert after == before


def _browser(server: AuxenServer, agent: str) -> httpx2.Client:
    return httpx2.Client(
        base_url=server.url, follow_redirects=False, timeout=30,
        headers={"User-Agent": agent, "X-Forwarded-For": "198.51.100.7"},
    )  # fmt: skip


def _log_in(b: httpx2.Client, email: str) -> None:
    form = b.get("/login")
    done = b.post(
        "/login", data={"csrf_token": csrf_of(form), "email": email, "password": PASSWORD}
    )
    assert done.status_code == 303, done.text


def test_a_sign_in_from_a_new_browser_is_told_once(world: World) -> None:
    email = "person@devices.example"
    with _browser(world.server, "FirstBrowser/1.0") as first:
        form = first.get("/signup")
        made = first.post(
            "/signup",
            data={"csrf_token": csrf_of(form), "email": email, "password": PASSWORD,
                  "workspace": "Devices"},
        )  # fmt: skip
        assert made.status_code == 303
        _log_in(first, email)  # the browser it signed up on is known
    with _browser(world.server, "SecondBrowser/2.0") as second:
        _log_in(second, email)
        _log_in(second, email)  # known from now on
    world.inbox.wait_for(lambda: len(world.inbox.to(email)) >= 1)
    time.sleep(1.0)
    (mail,) = world.inbox.to(email)
    assert "New sign-in" in mail.subject
    assert "SecondBrowser/2.0" in mail.text and "198.51.100.7" in mail.text
    assert PASSWORD not in mail.text


def test_a_crash_between_the_event_and_its_delivery_still_delivers_once(
    tmp_path: Path, world: World
) -> None:
    # The first server looks for deliveries only when it starts: the event it queues
    # is certainly undelivered when the process is killed.
    server = AuxenServer(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'data' / 'auxen.db'}",
        extra_env={**world.inbox.env(), **LOOPBACK_RECEIVERS, "AUXEN_NOTIFY_POLL_S": "3600"},
    ).start()
    hooks = WebhookReceiver()
    try:
        ws, key = server.workspace("owner@crash.example")
        http = server.client(key)
        made = http.post("/v1/notifications/webhooks", json={"url": hooks.url})
        secret = made.json()["secret"]
        key_id = http.post("/v1/keys", json={"name": "before the crash"}).json()["id"]
        queued = sql(server.database_url, "SELECT event, fanned_out_at FROM notification")
        assert queued == [("api_key_created", None)]
        server.stop(signal.SIGKILL)
        time.sleep(1.0)
        assert hooks.posts == [] and world.inbox.to("owner@crash.example") == []

        server.extra_env.update(FAST)
        server.start()
        wait_until(
            lambda: len(hooks.posts) >= 1 and len(world.inbox.to("owner@crash.example")) >= 1
        )
        time.sleep(2.0)  # ten more passes: nothing is sent again
        (post,) = hooks.posts
        verify_signature(post, secret)
        assert json.loads(post.body)["data"]["key_id"] == key_id
        assert len(world.inbox.to("owner@crash.example")) == 1
        rows = sql(
            server.database_url,
            "SELECT channel, state, attempts FROM notification_delivery WHERE workspace_id = :w "
            "ORDER BY channel",
            w=ws,
        )
        assert rows == [("email", "delivered", 1), ("webhook", "delivered", 1)]
    finally:
        server.stop_clean()
        hooks.stop()


def test_two_workers_never_deliver_one_notification_twice(
    database_url: str, tmp_path: Path
) -> None:
    hooks = WebhookReceiver()
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, notify_poll_s=0.05, notify_backoff_s=0.1,
        outbound_allow_networks=LOOPBACK_RECEIVERS["AUXEN_OUTBOUND_ALLOW_NETWORKS"],
    )  # fmt: skip

    async def go() -> None:
        dbs = [Database(database_url), Database(database_url)]
        await dbs[0].migrate()
        workers = [NotificationWorker(db, settings) for db in dbs]
        try:
            ws = Workspace(name="race")
            async with dbs[0].system() as session:
                session.add(ws)
                user = User(email=f"race-{ws.id}@example.com")
                session.add(user)
                await session.flush()
                session.add(Membership(workspace_id=ws.id, user_id=user.id, role=Role.OWNER))
                session.add(
                    WebhookEndpoint(
                        workspace_id=ws.id, url=hooks.url,
                        secret_sealed=seal(settings.master_key_bytes, ws.id, "whsec_race"),
                    )
                )  # fmt: skip
                await session.commit()
            for n in range(8):
                event = Event(EventType.SECURITY_INCIDENT, {"title": f"drill {n}"})
                assert await notify(dbs[n % 2], ws.id, event) is not None
            for _ in range(5):
                await asyncio.gather(*(w.run_once() for w in workers))
        finally:
            for w in workers:
                await w.close()
            for db in dbs:
                await db.close()

    try:
        asyncio.run(go())
        titles = sorted(json.loads(p.body)["data"]["title"] for p in hooks.posts)
        assert titles == [f"drill {n}" for n in range(8)]  # each once, none twice
    finally:
        hooks.stop()


def test_turning_two_factor_on_and_off_is_told(world: World) -> None:
    email = "person@mfa-notify.example"
    with _browser(world.server, "MfaBrowser/1.0") as b:
        form = b.get("/signup")
        made = b.post(
            "/signup",
            data={"csrf_token": csrf_of(form), "email": email, "password": PASSWORD,
                  "workspace": "Mfa"},
        )  # fmt: skip
        assert made.status_code == 303
        _, codes = enrol_totp(b)
        world.inbox.wait_for(lambda: len(world.inbox.to(email)) == 1)
        page = b.get("/account")
        off = b.post(
            "/account/mfa/disable",
            data={"csrf_token": csrf_of(page), "password": PASSWORD, "code": codes[0]},
        )
        assert off.status_code == 303
    world.inbox.wait_for(lambda: len(world.inbox.to(email)) == 2)
    subjects = [m.subject for m in world.inbox.to(email)]
    assert subjects == [
        "[Auxen] Two-factor authentication turned on",
        "[Auxen] Two-factor authentication turned off",
    ]
    assert all(code not in m.text for m in world.inbox.to(email) for code in codes)


def test_a_security_incident_posted_by_an_operator_reaches_every_owner(world: World) -> None:
    owners = ["owner@incident-a.example", "owner@incident-b.example"]
    for email in owners:
        world.server.workspace(email)
    posted = world.server.cli(
        "incident", "post", "--title", "Key exposure investigated", "--severity", "major",
        "--message", "We are looking into it.", "--security",
    )  # fmt: skip
    assert "every workspace is being told" in posted.stdout, posted.stdout
    world.inbox.wait_for(lambda: all(world.inbox.to(e) for e in owners))
    for email in owners:
        (mail,) = [m for m in world.inbox.to(email) if "Security notice" in m.subject]
        assert "Key exposure investigated" in mail.subject
    # An ordinary incident is on /status only: nobody is mailed about it.
    before = len(world.inbox.to(owners[0]))
    world.server.cli(
        "incident", "post", "--title", "Slow provisioning", "--message", "Looking into it."
    )
    time.sleep(1.5)
    assert len(world.inbox.to(owners[0])) == before
    status = httpx2.get(f"{world.server.url}/status.json").json()
    assert {"Key exposure investigated", "Slow provisioning"} <= {
        i["title"] for i in status["incidents"]
    }
