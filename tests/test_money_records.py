"""Refunds and financial records (issue 17, item 7): Stripe's `charge.refunded` events for
one charge, delivered at the same moment, reverse the refunded credits once (the real
`stripe` library verifies each, against the Stripe stand-in's signatures); and deleting a
workspace keeps its ledger and audit log (content-free) for the retention period, after
which they are purged with it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from auxen.store.db import Database
from tests.ledger_checks import sql
from tests.servers import AuxenServer
from tests.stripe_standin import StripeStandIn, sign

TEST_SECRET = "sk_test_records"
WEBHOOK_SECRET = "whsec_test_records"


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AuxenServer, StripeStandIn]]:
    root = tmp_path_factory.mktemp("records")
    stripe = StripeStandIn(TEST_SECRET)
    with stripe.running():
        server = AuxenServer(
            root / "data",
            f"sqlite:///{root / 'auxen.db'}",
            {
                "AUXEN_STRIPE_TEST_SECRET_KEY": TEST_SECRET,
                "AUXEN_STRIPE_TEST_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "AUXEN_STRIPE_API_BASE": stripe.url,
            },
        ).start()
        try:
            yield server, stripe
        finally:
            server.stop_clean()


def deliver(server: AuxenServer, payload: bytes) -> httpx2.Response:
    return httpx2.post(
        f"{server.url}/v1/stripe/webhook",
        content=payload,
        headers={"Stripe-Signature": sign(payload, WEBHOOK_SECRET)},
        timeout=60,
    )


def test_concurrent_refund_events_of_one_charge_reverse_it_once(
    bank: tuple[AuxenServer, StripeStandIn],
) -> None:
    server, stripe = bank
    ws, key = server.workspace("refunded@example.com", test=True)
    http = server.client(key)
    sessions = []
    for _ in range(3):
        made = http.post("/v1/credits/checkout", json={"amount_usd": 20})
        assert made.status_code == 201, made.text
        session_id = made.json()["checkout_url"].rsplit("/", 1)[1]
        assert deliver(server, stripe.pay(session_id)).json()["outcome"] == "applied"
        sessions.append(session_id)
    assert http.get("/v1/balance").json()["balance_micros"] == 60_000_000
    # Each charge is refunded in full in steps; Stripe's events (each with its running
    # total, two of them for the full amount) all arrive at once.
    events = [
        stripe.refund(session_id, cents)
        for session_id in sessions
        for cents in (500, 1000, 2000, 1500, 2000, 2000)
    ]
    outcomes: list[str] = []
    start = threading.Barrier(len(events))

    def one(payload: bytes) -> None:
        start.wait()
        reply = deliver(server, payload)
        assert reply.status_code == 200, reply.text
        outcomes.append(reply.json()["outcome"])

    threads = [threading.Thread(target=one, args=(payload,)) for payload in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(outcomes) == len(events) and "applied" in outcomes
    # Each charge was refunded once, in full: never more.
    assert http.get("/v1/balance").json()["balance_micros"] == 0
    per_charge: dict[str, int] = {}
    for reference, amount in sql(
        server.database_url,
        "SELECT reference, amount_micros FROM ledger_entry WHERE workspace_id = :w "
        "AND kind = 'reversal'",
        w=ws,
    ):
        charge = reference.rsplit(":", 1)[0]
        per_charge[charge] = per_charge.get(charge, 0) + amount
    assert sorted(per_charge.values()) == [20_000_000] * 3


def test_a_deleted_workspace_keeps_its_ledger_and_audit_log_for_the_retention_period(
    bank: tuple[AuxenServer, StripeStandIn],
) -> None:
    server, _ = bank
    ws, key = server.workspace("leaving@example.com", usd="3")
    with server.client(key) as http:
        capped = http.post("/v1/caps", json={"scope": "monthly", "amount_usd": "2"})
        assert capped.status_code == 200, capped.text

        def rows() -> dict[str, int]:
            counts: dict[str, int] = {}
            for table in ("ledger_entry", "audit_event", "api_key", "membership", "spending_cap"):
                counts[table] = sql(
                    server.database_url,
                    f"SELECT COUNT(*) FROM {table} WHERE workspace_id = :w",
                    w=ws,
                )[0][0]
            return counts

        before = rows()
        assert before["ledger_entry"] == 1 and before["audit_event"] >= 1
        done = http.delete("/v1/workspace", params={"confirm": ws})
        assert done.status_code == 200, done.text
        assert http.get("/v1/balance").status_code == 401  # nobody reaches it any more
    after = rows()
    # The money and who-did-what stay (with the deletion itself recorded); the rest goes.
    assert after["ledger_entry"] == before["ledger_entry"]
    assert after["audit_event"] == before["audit_event"] + 1
    assert after["api_key"] == after["membership"] == after["spending_cap"] == 0
    actions = sql(
        server.database_url,
        "SELECT action FROM audit_event WHERE workspace_id = :w ORDER BY created_at DESC",
        w=ws,
    )
    assert actions[0] == ("workspace.delete",)
    ((name, deleted_at),) = sql(
        server.database_url, "SELECT name, deleted_at FROM workspace WHERE id = :w", w=ws
    )
    assert name == "" and deleted_at is not None

    from auxen.billing.retention import purge_deleted_workspaces

    async def purge(days: int) -> int:
        db = Database(server.database_url)
        try:
            return await purge_deleted_workspaces(db, days)
        finally:
            await db.close()

    # Within the retention period nothing goes; after it, the records and the row go.
    assert asyncio.run(purge(3650)) == 0 and rows()["ledger_entry"] == 1
    assert asyncio.run(purge(0)) >= 1
    gone: dict[str, Any] = rows()
    assert gone["ledger_entry"] == gone["audit_event"] == 0
    assert sql(server.database_url, "SELECT COUNT(*) FROM workspace WHERE id = :w", w=ws) == [(0,)]
