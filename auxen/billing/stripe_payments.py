"""Credits through Stripe, with the official `stripe` library.

Buying credits opens a Stripe Checkout Session for the workspace's Stripe customer; no
card data ever reaches Auxen. Credits land only from the webhook: its signature is
verified by the library (`stripe.Webhook.construct_event`, which also refuses events
signed more than five minutes ago), and each event is applied once (its id is recorded
in the same transaction as the ledger row). A refund or a dispute takes the credits
back. Test-mode keys (`auxen_test_`) use Stripe's test mode and its own keys. Keys come
from the environment only.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import stripe
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col

from auxen.billing.ledger import Ledger
from auxen.config import Settings
from auxen.store.db import Database
from auxen.store.models import LedgerEntry, LedgerKind, StripeEvent, Workspace
from auxen.tools.errors import InvalidArgument, Unavailable

log = logging.getLogger(__name__)

MICROS_PER_CENT = 10_000
PURCHASE_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")


class WebhookRejected(Exception):
    """Not a genuine, fresh Stripe event: answered 400 and nothing changes."""


@dataclass(frozen=True)
class Checkout:
    url: str
    session_id: str
    livemode: bool


class StripePayments:
    def __init__(self, db: Database, ledger: Ledger, settings: Settings) -> None:
        self.db = db
        self.ledger = ledger
        self.settings = settings

    def _client(self, livemode: bool) -> stripe.StripeClient:
        key = self.settings.stripe_secret_key if livemode else self.settings.stripe_test_secret_key
        if key is None:
            mode = "AUXEN_STRIPE_SECRET_KEY" if livemode else "AUXEN_STRIPE_TEST_SECRET_KEY"
            raise Unavailable(f"payments are not set up on this server ({mode} is not set)")
        base = self.settings.stripe_api_base
        return stripe.StripeClient(
            key.get_secret_value(),
            base_addresses={"api": base} if base else None,
            max_network_retries=2,
        )

    # -- buying --------------------------------------------------------------------

    async def checkout(self, workspace_id: str, livemode: bool, amount_usd: int) -> Checkout:
        if not 5 <= amount_usd <= 10_000:
            raise InvalidArgument("buy between $5 and $10000 of credits", param="amount_usd")
        client = self._client(livemode)
        customer = await self._customer(client, workspace_id, livemode)
        base = self.settings.base_url
        params: dict[str, Any] = {
            "mode": "payment",
            "customer": customer,
            "client_reference_id": workspace_id,
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": amount_usd * 100,
                        "product_data": {"name": "Auxen credits"},
                    },
                }
            ],
            "metadata": {"workspace_id": workspace_id},
            "payment_intent_data": {"metadata": {"workspace_id": workspace_id}},
            "success_url": f"{base}/billing?credits=thanks",
            "cancel_url": f"{base}/billing?credits=cancelled",
        }
        session = await self._call(
            lambda: client.v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]
        )
        return Checkout(url=str(session.url), session_id=session.id, livemode=livemode)

    async def _customer(self, client: stripe.StripeClient, workspace_id: str, live: bool) -> str:
        async with self.db.system() as session:
            workspace = await session.get(Workspace, workspace_id)
        assert workspace is not None
        existing = workspace.stripe_customer_id if live else workspace.stripe_test_customer_id
        if existing:
            return existing
        made = await self._call(
            lambda: client.v1.customers.create(
                params={"name": workspace.name, "metadata": {"workspace_id": workspace_id}}
            )
        )
        column = "stripe_customer_id" if live else "stripe_test_customer_id"
        async with self.db.engine.begin() as conn:
            # Another request may have made one meanwhile: the first one stays.
            await conn.execute(
                sa.update(Workspace)
                .where(col(Workspace.id) == workspace_id)
                .where(getattr(Workspace, column).is_(None))
                .values({column: made.id})
            )
            stored = (
                await conn.execute(
                    sa.select(getattr(Workspace, column)).where(col(Workspace.id) == workspace_id)
                )
            ).scalar_one()
        return str(stored)

    async def _call(self, call: Any) -> Any:
        try:
            return await asyncio.to_thread(call)
        except stripe.StripeError as exc:
            log.warning("stripe refused a request: %s", type(exc).__name__)
            raise Unavailable(
                f"the payment provider refused the request ({type(exc).__name__}: "
                f"{exc.user_message or 'try again later'})"
            ) from None

    # -- the webhook -----------------------------------------------------------------

    def verify(self, payload: bytes, signature: str | None) -> stripe.Event:
        """The event, if Stripe signed exactly these bytes recently with one of our
        endpoint secrets (live or test); its `livemode` must match the secret's."""
        if not signature:
            raise WebhookRejected("no Stripe-Signature header")
        for secret, livemode in (
            (self.settings.stripe_webhook_secret, True),
            (self.settings.stripe_test_webhook_secret, False),
        ):
            if secret is None:
                continue
            try:
                event = stripe.Webhook.construct_event(
                    payload, signature, secret.get_secret_value()
                )
            except stripe.SignatureVerificationError:
                continue
            except ValueError:
                raise WebhookRejected("the body is not a Stripe event") from None
            if bool(event.livemode) != livemode:
                raise WebhookRejected("the event's mode does not match its signing secret")
            verified: stripe.Event = event
            return verified
        raise WebhookRejected("the signature does not match, or the event is too old")

    async def apply(self, event: stripe.Event) -> str:
        """Apply a verified event once: 'applied', 'duplicate' or 'ignored'."""
        obj: dict[str, Any] = event.data.object.to_dict()
        livemode = bool(event.livemode)
        if event.type in PURCHASE_EVENTS:
            if obj.get("payment_status") != "paid":
                return "ignored"  # an asynchronous payment that has not cleared yet
            workspace_id = (obj.get("metadata") or {}).get("workspace_id")
            if not await self._customer_matches(workspace_id, obj.get("customer"), livemode):
                log.warning("checkout %s names a workspace that is not its customer's", obj["id"])
                return "ignored"
            return await self._once(
                event,
                workspace_id,
                livemode,
                LedgerKind.PURCHASE,
                int(obj["amount_total"]) * MICROS_PER_CENT,
                reference=obj["id"],
                note=f"pi:{obj.get('payment_intent') or ''}",
            )
        if event.type == "charge.refunded":
            workspace_id = await self._workspace_of_payment(obj.get("payment_intent"), livemode)
            # Stripe sends the charge's refunds so far; what is new is worked out under
            # the wallet's lock, so concurrent events for one charge reverse it once.
            refunded = int(obj.get("amount_refunded") or 0) * MICROS_PER_CENT
            if workspace_id is None or refunded <= 0:
                return "ignored"
            return await self._once(
                event, workspace_id, livemode, LedgerKind.REVERSAL, refunded,
                reference=f"refund:{obj['id']}:{obj.get('amount_refunded')}", note="refund",
                running_total_of=f"refund:{obj['id']}:",
            )  # fmt: skip
        if event.type == "charge.dispute.created":
            workspace_id = await self._workspace_of_payment(obj.get("payment_intent"), livemode)
            if workspace_id is None:
                return "ignored"
            return await self._once(
                event, workspace_id, livemode, LedgerKind.REVERSAL,
                int(obj["amount"]) * MICROS_PER_CENT, reference=f"dispute:{obj['id']}",
                note="dispute",
            )  # fmt: skip
        return "ignored"

    async def _once(
        self,
        event: stripe.Event,
        workspace_id: str | None,
        livemode: bool,
        kind: LedgerKind,
        amount: int,
        *,
        reference: str,
        note: str,
        running_total_of: str | None = None,
    ) -> str:
        assert workspace_id is not None

        async def record_event(conn: AsyncConnection) -> None:
            await conn.execute(
                sa.insert(StripeEvent).values(
                    id=event.id,
                    type=event.type,
                    workspace_id=workspace_id,
                    processed_at=datetime.now(UTC),
                )
            )

        try:  # the event and its ledger row commit together, or neither does
            applied = await self.ledger.credit(
                workspace_id, livemode, amount, kind=kind, reference=reference, note=note,
                also=record_event, running_total_of=running_total_of,
            )  # fmt: skip
        except IntegrityError:
            return "duplicate"  # this event id was applied already
        if applied:
            from auxen.tools.audit import Actor, record, safely

            await safely(
                record(
                    self.ledger.db, workspace_id, Actor("system", "stripe", "Stripe"),
                    f"credits.{kind.value}", target_type="stripe_event", target_id=event.id,
                    detail={
                        "refunded_total_micros" if running_total_of else "amount_micros": amount,
                        "livemode": livemode,
                    },
                )
            )  # fmt: skip
        return "applied" if applied else "duplicate"

    async def _customer_matches(
        self, workspace_id: str | None, customer: str | None, livemode: bool
    ) -> bool:
        if not workspace_id or not customer:
            return False
        async with self.db.system() as session:
            workspace = await session.get(Workspace, workspace_id)
        if workspace is None:
            return False
        return customer == (
            workspace.stripe_customer_id if livemode else workspace.stripe_test_customer_id
        )

    async def _workspace_of_payment(self, payment_intent: str | None, livemode: bool) -> str | None:
        """The workspace whose purchase was paid by `payment_intent`."""
        if not payment_intent:
            return None
        async with self.db.engine.connect() as conn:
            found = await conn.execute(
                sa.select(col(LedgerEntry.workspace_id)).where(
                    col(LedgerEntry.kind) == LedgerKind.PURCHASE.value,
                    col(LedgerEntry.livemode) == livemode,
                    col(LedgerEntry.note) == f"pi:{payment_intent}",
                )
            )
            row = found.first()
        return str(row[0]) if row else None
