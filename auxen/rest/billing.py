"""REST for money: the balance, spending caps, buying credits, and Stripe's webhook."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from auxen.billing.stripe_payments import WebhookRejected
from auxen.httputil import openai_error, read_json_body
from auxen.runtime import Runtime
from auxen.tools import billing, notifications, payments
from auxen.tools.errors import InvalidArgument, parse_model

log = logging.getLogger(__name__)
WEBHOOK_MAX_BYTES = 512 * 1024


class BillingApi:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def balance(self, request: Request) -> Response:
        caller = await self.rt.auth.for_request(request)
        view = await billing.get_balance(self.rt, caller)
        return JSONResponse(view.model_dump(mode="json"))

    async def set_cap(self, request: Request) -> Response:
        caller = await self.rt.auth.for_request(request)
        body = await read_json_body(request, self.rt.settings.max_body_bytes)
        req = parse_model(billing.CapRequest, body)
        view = await billing.set_spending_cap(self.rt, caller, req)
        return JSONResponse(view.model_dump(mode="json"))

    async def checkout(self, request: Request) -> Response:
        caller = await self.rt.auth.for_request(request)
        body = await read_json_body(request, self.rt.settings.max_body_bytes)
        amount = body.get("amount_usd")
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise InvalidArgument(
                "amount_usd must be a whole number of dollars", param="amount_usd"
            )
        made = await payments.start_checkout(self.rt, caller, amount)
        return JSONResponse(
            {"object": "checkout", "checkout_url": made.url, "amount_usd": amount,
             "livemode": made.livemode},
            status_code=201,
        )  # fmt: skip

    async def alert_webhook(self, request: Request) -> Response:
        caller = await self.rt.auth.for_request(request)
        body = await read_json_body(request, self.rt.settings.max_body_bytes)
        url = body.get("url")
        if set(body) - {"url"}:
            bad = sorted(set(body) - {"url"})[0]
            raise InvalidArgument(f"unknown field {bad!r}", param=bad)
        if url is not None and not isinstance(url, str):
            raise InvalidArgument("url must be a string or null", param="url")
        view = await notifications.set_alert_webhook(self.rt, caller, url)
        # The shape this endpoint always had, plus the endpoint it manages.
        return JSONResponse(
            {"url": url, "secret": view.secret, "webhook_endpoint_id": view.id or None}
        )

    async def stripe_webhook(self, request: Request) -> Response:
        """Stripe's calls: verified by signature (no key), applied once per event."""
        payload = await request.body()
        if len(payload) > WEBHOOK_MAX_BYTES:
            return openai_error(
                413, "webhook body too large", type_="invalid_request_error", code="too_large"
            )
        try:
            event = self.rt.payments.verify(payload, request.headers.get("stripe-signature"))
        except WebhookRejected as exc:
            log.warning("refused a Stripe webhook: %s", exc)
            return openai_error(
                400, str(exc), type_="invalid_request_error", code="invalid_signature"
            )
        outcome = await self.rt.payments.apply(event)
        return JSONResponse({"received": True, "outcome": outcome})
