"""A local stand-in for the part of Stripe's HTTP API Auxen uses, so the real `stripe`
library can be exercised without Stripe's servers: customers and Checkout Sessions
(form-encoded requests, JSON objects as in Stripe's API reference), Bearer secret-key
auth, and Stripe's error shape. It also plays Stripe's side of the webhook: completing a
payment, refunding or disputing it produces the event Stripe would send, signed the way
Stripe signs (`Stripe-Signature: t=<unix time>,v1=<HMAC-SHA256 of "t.payload">`).

`fail_next()` injects Stripe's documented failures (rate limits, API errors, invalid
requests) into the next call.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.servers import free_port


def _nested(form: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding (`line_items[0][price_data][unit_amount]=500`) as JSON."""
    out: dict[str, Any] = {}
    for key, value in form:
        parts = re.findall(r"[^\[\]]+", key)
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _listify(out)  # type: ignore[no-any-return]


def _listify(node: Any) -> Any:
    if isinstance(node, dict):
        if node and all(k.isdigit() for k in node):
            return [_listify(node[k]) for k in sorted(node, key=int)]
        return {k: _listify(v) for k, v in node.items()}
    return node


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


class StripeStandIn:
    def __init__(self, secret_key: str) -> None:
        self.secret_key = secret_key
        self.livemode = secret_key.startswith("sk_live_")
        self.port = free_port()
        self.customers: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self._failures: list[tuple[int, dict[str, Any]]] = []
        self._server: uvicorn.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, status: int, type_: str, message: str, code: str | None = None) -> None:
        self._failures.append(
            (status, {"error": {"type": type_, "message": message, "code": code}})
        )

    def _id(self, prefix: str) -> str:
        mode = "live" if self.livemode else "test"
        return f"{prefix}_{mode}_{secrets.token_hex(12)}"

    # -- the API ---------------------------------------------------------------------

    async def _guard(self, request: Request) -> Response | None:
        self.requests.append((request.method, request.url.path))
        if request.headers.get("authorization") != f"Bearer {self.secret_key}":
            return JSONResponse(
                {"error": {"type": "invalid_request_error",
                           "message": "Invalid API Key provided"}},
                status_code=401,
            )  # fmt: skip
        if self._failures:
            status, body = self._failures.pop(0)
            return JSONResponse(body, status_code=status)
        return None

    async def create_customer(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        params = _nested(parse_qsl((await request.body()).decode()))
        customer = {
            "id": self._id("cus").replace("_test", "").replace("_live", ""),
            "object": "customer",
            "created": int(time.time()),
            "livemode": self.livemode,
            "name": params.get("name"),
            "email": params.get("email"),
            "metadata": params.get("metadata", {}),
        }
        self.customers[customer["id"]] = customer
        return JSONResponse(customer)

    async def create_session(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        params = _nested(parse_qsl((await request.body()).decode()))
        items = params.get("line_items") or []
        if params.get("mode") != "payment" or not items:
            return JSONResponse(
                {"error": {"type": "invalid_request_error", "param": "line_items",
                           "message": "Missing required param: line_items."}},
                status_code=400,
            )  # fmt: skip
        amount = sum(int(i["price_data"]["unit_amount"]) * int(i.get("quantity", 1)) for i in items)
        session_id = self._id("cs")
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": amount,
            "amount_total": amount,
            "currency": items[0]["price_data"]["currency"],
            "customer": params.get("customer"),
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata", {}),
            "mode": "payment",
            "livemode": self.livemode,
            "payment_intent": None,
            "payment_status": "unpaid",
            "status": "open",
            "success_url": params.get("success_url"),
            "cancel_url": params.get("cancel_url"),
            "created": int(time.time()),
            "expires_at": int(time.time()) + 86400,
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
        }
        self.sessions[session_id] = session
        return JSONResponse(session)

    # -- Stripe's side of the webhook ----------------------------------------------------

    def event(self, type_: str, obj: dict[str, Any]) -> bytes:
        return json.dumps(
            {
                "id": f"evt_{secrets.token_hex(12)}",
                "object": "event",
                "api_version": "2025-10-29.clover",
                "created": int(time.time()),
                "type": type_,
                "livemode": self.livemode,
                "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None},
                "data": {"object": obj},
            }
        ).encode()

    def pay(self, session_id: str) -> bytes:
        """The customer pays: the session completes; the event Stripe would send."""
        session = self.sessions[session_id]
        session.update(
            payment_intent=f"pi_{secrets.token_hex(12)}", payment_status="paid", status="complete"
        )
        return self.event("checkout.session.completed", dict(session))

    def refund(self, session_id: str, cents_refunded_in_total: int) -> bytes:
        session = self.sessions[session_id]
        charge = {
            "id": f"ch_{session['payment_intent'][3:]}",
            "object": "charge",
            "amount": session["amount_total"],
            "amount_refunded": cents_refunded_in_total,
            "refunded": cents_refunded_in_total == session["amount_total"],
            "currency": session["currency"],
            "customer": session["customer"],
            "payment_intent": session["payment_intent"],
            "livemode": self.livemode,
        }
        return self.event("charge.refunded", charge)

    def dispute(self, session_id: str) -> bytes:
        session = self.sessions[session_id]
        dispute = {
            "id": f"dp_{secrets.token_hex(12)}",
            "object": "dispute",
            "amount": session["amount_total"],
            "currency": session["currency"],
            "charge": f"ch_{session['payment_intent'][3:]}",
            "payment_intent": session["payment_intent"],
            "reason": "fraudulent",
            "status": "needs_response",
            "livemode": self.livemode,
        }
        return self.event("charge.dispute.created", dispute)

    # -- running ---------------------------------------------------------------------

    @contextmanager
    def running(self) -> Iterator[StripeStandIn]:
        app = Starlette(
            routes=[
                Route("/v1/customers", self.create_customer, methods=["POST"]),
                Route("/v1/checkout/sessions", self.create_session, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        thread = threading.Thread(target=self._server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            yield self
        finally:
            self._server.should_exit = True
            thread.join(timeout=10)
