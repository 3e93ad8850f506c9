"""Money on a running server with a fast clock (2-second billing ticks, a priced CPU
"GPU" at $3.60/h, so one window costs $0.002): provisioning needs credits and respects
the burn cap; an instance is destroyed before its cap is crossed; GPU time is charged
tick by tick until the idle timeout ends it; a kill -9 leaves nothing charged twice;
credits bought through Stripe (the real `stripe` library against a local stand-in of
Stripe's API, webhooks signed the way Stripe signs them) land once and go back on refund
or dispute; bad input changes nothing."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.ledger_checks import settled_exactly, sql
from tests.mcp_clients import error_text, http_client, structured
from tests.notify_receivers import LOOPBACK_RECEIVERS
from tests.servers import AuxenServer, wait_for_state
from tests.stripe_standin import StripeStandIn, sign

WINDOW = 2_000  # micro-dollars per 2-second tick at $3.60/h
TEST_SECRET = "sk_test_standin"
WEBHOOK_SECRET = "whsec_test_standin"


@dataclass
class Bank:
    server: AuxenServer
    stripe: StripeStandIn
    model: str

    def workspace(self, email: str, usd: str | None = None) -> tuple[str, httpx2.Client]:
        """A test-mode workspace (its id and a client with its key), with credits."""
        workspace_id, key = self.server.workspace(email, test=True, usd=usd)
        return workspace_id, self.server.client(key)

    def grant(self, workspace_id: str, usd: str) -> None:
        done = self.server.cli(
            "credits", "grant", "--workspace", workspace_id, "--usd", usd, "--test",
            "--reference", f"grant-{time.monotonic_ns()}",
        )  # fmt: skip
        assert "granted" in done.stdout, done.stdout + done.stderr

    def sql(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        return sql(self.server.database_url, query, **params)

    def consistent(self, workspace_id: str) -> None:
        settled_exactly(self.server.database_url, workspace_id)

    def charged(self, instance_id: str) -> int:
        return int(
            self.sql(
                "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger_entry "
                "WHERE instance_id = :i AND kind = 'charge'",
                i=instance_id,
            )[0][0]
        )

    def open_holds(self, instance_id: str) -> int:
        return int(
            self.sql(
                "SELECT COUNT(*) FROM reservation WHERE instance_id = :i AND open", i=instance_id
            )[0][0]
        )


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Bank]:
    root = tmp_path_factory.mktemp("billing")
    prices = root / "prices.toml"
    prices.write_text('[gpu.cpu]\nhourly_usd = "3.60"\n')
    stripe = StripeStandIn(TEST_SECRET)
    with stripe.running():
        server = AuxenServer(
            root / "data",
            f"sqlite:///{root / 'auxen.db'}",
            extra_env={
                "AUXEN_PRICES_FILE": str(prices),
                "AUXEN_BILLING_TICK_S": "2",
                "AUXEN_MIN_LIFETIME_S": "2",
                "AUXEN_STRIPE_TEST_SECRET_KEY": TEST_SECRET,
                "AUXEN_STRIPE_TEST_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "AUXEN_STRIPE_API_BASE": stripe.url,
                **LOOPBACK_RECEIVERS,  # the alert webhook's receiver
            },
        )
        server.start()
        try:
            yield Bank(server, stripe, str(tiny_model))
        finally:
            server.stop_clean()


def provision(http: httpx2.Client, model: str, **extra: Any) -> httpx2.Response:
    return http.post("/v1/instances", json={"model": model, **extra})


def test_provisioning_needs_credits_and_respects_the_burn_cap(bank: Bank) -> None:
    ws, http = bank.workspace("broke@example.com")
    refused = provision(http, bank.model)
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert refused.json()["error"]["param"] == "balance"
    assert http.get("/v1/instances").json()["data"] == []
    bank.grant(ws, "1")
    capped = http.post("/v1/caps", json={"scope": "max_burn", "amount_usd": "1"})
    assert capped.status_code == 200
    assert capped.json()["caps"][0]["amount_micros"] == 1_000_000
    over = provision(http, bank.model)  # $3.60/h would pass the $1/h burn cap
    assert over.status_code == 402 and over.json()["error"]["param"] == "max_burn"
    assert http.get("/v1/instances").json()["data"] == []
    assert bank.sql("SELECT COUNT(*) FROM reservation WHERE workspace_id = :w", w=ws) == [(0,)]
    balance = http.get("/v1/balance").json()
    assert balance["available_micros"] == 1_000_000 and balance["held_micros"] == 0


class Receiver:
    """A workspace's alert webhook: a real HTTP server on loopback that keeps what it gets."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((body, self.headers.get("Auxen-Signature", "")))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/hooks/auxen"


def test_an_instance_is_destroyed_before_it_passes_its_cap(bank: Bank) -> None:
    ws, http = bank.workspace("capped@example.com", usd="1")
    receiver = Receiver()
    hook = http.put("/v1/alerts/webhook", json={"url": receiver.url})
    assert hook.status_code == 200 and hook.json()["secret"].startswith("whsec_")
    secret = hook.json()["secret"]
    made = provision(http, bank.model, spend_cap_usd="0.006")  # three windows
    assert made.status_code == 202, made.text
    instance = made.json()["id"]
    gone = wait_for_state(http, instance, {"destroyed"}, timeout=60)
    assert gone["destroy_reason"] == "budget_exceeded:instance"
    deadline = time.monotonic() + 10
    while bank.open_holds(instance) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert bank.open_holds(instance) == 0
    assert bank.charged(instance) == 3 * WINDOW  # every started window, never a fourth
    balance = http.get("/v1/balance").json()
    assert balance["balance_micros"] == 1_000_000 - 3 * WINDOW and balance["held_micros"] == 0
    assert [a["kind"] for a in balance["alerts"]] == ["instance_stopped_budget"]
    assert instance in balance["alerts"][0]["message"]
    bank.consistent(ws)
    # The owner's webhook got the alert, signed with the secret shown once.
    deadline = time.monotonic() + 10
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.2)
    receiver.httpd.shutdown()
    ((body, signed),) = receiver.received
    t = signed.split(",")[0].removeprefix("t=")
    assert signed == sign(body, secret, timestamp=int(t))  # Stripe's scheme, our secret
    sent = json.loads(body)
    assert sent["alert"]["kind"] == "instance_stopped_budget"
    assert sent["alert"]["instance_id"] == instance and sent["workspace_id"] == ws


@pytest.mark.parametrize(
    "url", ["http://hooks.example/x", "ftp://127.0.0.1/x", "https://user:pw@hooks.example/", 5]
)
def test_alert_webhooks_must_be_https_without_credentials(bank: Bank, url: Any) -> None:
    _, http = bank.workspace(f"hooks-{abs(hash(str(url)))}@example.com")
    refused = http.put("/v1/alerts/webhook", json={"url": url})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "url"


def test_gpu_time_is_charged_per_tick_until_the_idle_timeout(bank: Bank) -> None:
    ws, http = bank.workspace("metered@example.com", usd="1")
    made = provision(http, bank.model, idle_timeout=4)
    assert made.status_code == 202, made.text
    instance, key = made.json()["id"], made.json()["instance_key"]
    ready = wait_for_state(http, instance, {"ready", "failed"})
    assert ready["state"] == "ready", ready["last_error"]
    assert ready["idle_timeout_s"] == 4
    chat = httpx2.post(
        f"{bank.server.url}/v1/instances/{instance}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=60,
    )
    assert chat.status_code == 200
    asked = time.time()
    gone = wait_for_state(http, instance, {"destroyed"}, timeout=60)
    assert gone["destroy_reason"] == "idle_timeout"
    assert time.time() - asked >= 4  # idle counts from the last query
    deadline = time.monotonic() + 10
    while bank.open_holds(instance) and time.monotonic() < deadline:
        time.sleep(0.3)
    # One window after another, from provisioning to the end, without gaps or overlaps;
    # every window that started before the instance stopped is charged in full.
    spans = bank.sql(
        "SELECT r.window_start, r.window_end, r.window_start < i.stopped_at FROM reservation r "
        "JOIN instance i ON i.id = r.instance_id WHERE r.instance_id = :i "
        "ORDER BY r.window_start",
        i=instance,
    )
    assert all(nxt[0] == prev[1] for prev, nxt in itertools.pairwise(spans))
    started = [span for span in spans if span[2]]
    assert len(started) >= 5 and started[-1][1] >= gone["destroyed_at"].replace("T", " ")[:19]
    assert bank.charged(instance) == len(started) * WINDOW
    usage = http.get("/v1/usage", params={"instance_id": instance}).json()
    assert usage["instances"][0]["charged_micros"] == bank.charged(instance)
    assert http.get("/v1/balance").json()["balance_micros"] == 1_000_000 - bank.charged(instance)
    bank.consistent(ws)


def test_a_crash_between_reserving_and_charging_charges_nothing_twice(bank: Bank) -> None:
    ws, http = bank.workspace("crash@example.com", usd="1")
    instance = provision(http, bank.model).json()["id"]
    time.sleep(3)  # a window charged, the next reserved
    bank.server.stop(signal.SIGKILL)
    time.sleep(3)  # windows end while nobody is metering
    bank.server.start()
    time.sleep(1.5)  # the first pass settles what the crash left
    assert http.delete(f"/v1/instances/{instance}").json()["state"] == "destroyed"
    deadline = time.monotonic() + 10
    while bank.open_holds(instance) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert bank.open_holds(instance) == 0
    bank.consistent(ws)
    started = bank.sql(
        "SELECT COUNT(*) FROM reservation r JOIN instance i ON i.id = r.instance_id "
        "WHERE r.instance_id = :i AND r.window_start < i.stopped_at",
        i=instance,
    )[0][0]
    assert bank.charged(instance) == started * WINDOW
    # The downtime was not billed: windows never overlap and none covers the gap.
    spans = bank.sql(
        "SELECT window_start, window_end FROM reservation WHERE instance_id = :i "
        "ORDER BY window_start",
        i=instance,
    )
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end


def _hook(bank: Bank, payload: bytes, secret: str = WEBHOOK_SECRET, **kw: Any) -> httpx2.Response:
    return httpx2.post(
        f"{bank.server.url}/v1/stripe/webhook",
        content=payload,
        headers={
            "Stripe-Signature": sign(payload, secret, **kw),
            "Content-Type": "application/json",
        },
    )


def test_credits_bought_through_stripe_land_once_and_go_back(bank: Bank) -> None:
    ws, http = bank.workspace("buyer@example.com")
    first = http.post("/v1/credits/checkout", json={"amount_usd": 20})
    assert first.status_code == 201, first.text
    assert first.json()["checkout_url"].startswith("https://checkout.stripe.com/")
    assert first.json()["livemode"] is False
    session_id = first.json()["checkout_url"].rsplit("/", 1)[1]
    again = http.post("/v1/credits/checkout", json={"amount_usd": 5})
    assert again.status_code == 201
    assert len(bank.stripe.customers) == 1  # one Stripe customer per workspace and mode
    assert http.get("/v1/balance").json()["balance_micros"] == 0  # nothing until paid

    paid = bank.stripe.pay(session_id)
    assert _hook(bank, paid).json()["outcome"] == "applied"
    assert http.get("/v1/balance").json()["balance_micros"] == 20_000_000
    assert _hook(bank, paid).json()["outcome"] == "duplicate"  # Stripe retries: applied once
    forged = _hook(bank, paid, secret="whsec_forged")
    stale = _hook(bank, paid, timestamp=int(time.time()) - 600)
    tampered = httpx2.post(
        f"{bank.server.url}/v1/stripe/webhook",
        content=paid.replace(b"2000", b"9000"),
        headers={"Stripe-Signature": sign(paid, WEBHOOK_SECRET)},
    )
    unsigned = httpx2.post(f"{bank.server.url}/v1/stripe/webhook", content=paid)
    assert [r.status_code for r in (forged, stale, tampered, unsigned)] == [400] * 4
    other = bank.stripe.event("customer.subscription.created", {"id": "sub_1"})
    assert _hook(bank, other).json()["outcome"] == "ignored"
    assert http.get("/v1/balance").json()["balance_micros"] == 20_000_000

    assert _hook(bank, bank.stripe.refund(session_id, 500)).json()["outcome"] == "applied"
    assert http.get("/v1/balance").json()["balance_micros"] == 15_000_000
    assert _hook(bank, bank.stripe.refund(session_id, 2000)).json()["outcome"] == "applied"
    assert http.get("/v1/balance").json()["balance_micros"] == 0  # refunded in full
    assert _hook(bank, bank.stripe.dispute(session_id)).json()["outcome"] == "applied"
    assert http.get("/v1/balance").json()["balance_micros"] == -20_000_000
    assert bank.sql(
        "SELECT kind, COUNT(*) FROM ledger_entry WHERE workspace_id = :w GROUP BY kind "
        "ORDER BY kind",
        w=ws,
    ) == [("purchase", 1), ("reversal", 3)]


def test_stripe_failures_are_clear_and_change_nothing(bank: Bank) -> None:
    _, http = bank.workspace("unlucky@example.com")
    assert http.post("/v1/credits/checkout", json={"amount_usd": 10}).status_code == 201
    sessions = len(bank.stripe.sessions)
    for _ in range(3):  # the library retries twice; the third failure reaches the caller
        bank.stripe.fail_next(500, "api_error", "An unknown error occurred")
    failed = http.post("/v1/credits/checkout", json={"amount_usd": 10})
    assert failed.status_code == 502, failed.text
    assert "payment provider refused" in failed.json()["error"]["message"]
    assert len(bank.stripe.sessions) == sessions
    live_key = bank.server.init_workspace("live-buyer@example.com")
    not_set_up = bank.server.client(live_key).post("/v1/credits/checkout", json={"amount_usd": 10})
    assert not_set_up.status_code == 502 and "AUXEN_STRIPE_SECRET_KEY" in not_set_up.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"scope": "monthly", "amount_usd": "-1"}, "amount_usd"),
        ({"scope": "monthly", "amount_usd": "NaN"}, "amount_usd"),
        ({"scope": "monthly", "amount_usd": "1e12"}, "amount_usd"),
        ({"scope": "monthly", "amount_usd": "0.0000001"}, "amount_usd"),
        ({"scope": "weekly", "amount_usd": "5"}, "scope"),
        ({"scope": "instance", "amount_usd": "5"}, "instance_id"),
        ({"scope": "instance", "amount_usd": "5", "instance_id": "inst_nope"}, "instance_id"),
        ({"scope": "monthly", "amount_usd": "5", "instance_id": "inst_x"}, "instance_id"),
        ({"scope": "client_monthly", "amount_usd": "5"}, "client_id"),
        ({"scope": "monthly", "amount_usd": "5", "extra": 1}, "extra"),
    ],
)
def test_bad_caps_are_refused_and_change_nothing(
    bank: Bank, body: dict[str, Any], param: str
) -> None:
    _, http = bank.workspace(f"caps-{abs(hash(str(body)))}@example.com")
    http.post("/v1/caps", json={"scope": "monthly", "amount_usd": "7"})
    before = http.get("/v1/balance").json()["caps"]
    refused = http.post("/v1/caps", json=body)
    assert refused.status_code in (400, 404), refused.text
    assert refused.json()["error"]["param"] == param
    assert http.get("/v1/balance").json()["caps"] == before


def test_bad_checkouts_are_refused(bank: Bank) -> None:
    _, http = bank.workspace("bad-buyer@example.com")
    for amount in (3, 10_001, 12.5, "20", True, None):
        refused = http.post("/v1/credits/checkout", json={"amount_usd": amount})
        assert refused.status_code == 400, (amount, refused.text)
        assert refused.json()["error"]["param"] == "amount_usd"


async def test_agents_see_and_set_caps_over_mcp(bank: Bank) -> None:
    made = await asyncio.to_thread(bank.server.cli, "init", "--email", "agent-caps@example.com")
    key = next(x for x in made.stdout.split() if x.startswith("auxen_live_"))
    async with http_client(bank.server.url, key) as client:
        balance = structured(await client.call_tool("get_balance", {}))
        assert balance["available_micros"] == 0 and balance["caps"] == []
        for args, name in (
            ({"scope": "monthly", "amount_usd": -1}, "amount_usd"),
            ({"scope": "monthly", "amount_usd": "5"}, "amount_usd"),
            ({"scope": "yearly", "amount_usd": 5}, "scope"),
            ({"scope": "instance", "amount_usd": 5, "instance_id": "inst_nope"}, "instance_id"),
        ):
            assert f"[argument: {name}]" in error_text(
                await client.call_tool("set_spending_cap", args)
            )
        assert structured(await client.call_tool("get_balance", {}))["caps"] == []
        done = structured(
            await client.call_tool("set_spending_cap", {"scope": "monthly", "amount_usd": 12.5})
        )
        assert done["caps"] == [
            {"scope": "monthly", "subject": None, "amount_micros": 12_500_000,
             "amount_usd": "12.5", "used_micros": 0}
        ]  # fmt: skip
        removed = structured(
            await client.call_tool("set_spending_cap", {"scope": "monthly", "amount_usd": None})
        )
        assert removed["caps"] == []
        broke = error_text(await client.call_tool("provision_instance", {"model": bank.model}))
        assert broke.startswith("budget_exceeded [argument: balance]")
