"""The dashboard for people: overview, instances, API keys, knowledge bases, usage and
billing, in the signed-in person's workspace.

Every page does its work through `auxen/tools/` (the operations REST and MCP use) with a
`Caller` for the person, so a person is held to the same rules as their keys and agents
(owner-only money, workspace scoping, typed errors). Pages are server-rendered; the only
scripts are static files (`static/dashboard.js`: a copy button and polling the instance
states), so the strict Content-Security-Policy holds. Charts are inline SVG drawn here,
each with a table beside it. Long lists are paginated; totals are summed in the database.

Security (second factor, recovery codes) and connected agents live on the account page
(`web/account.py`), shown inside this layout.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from auxen.auth.oauth.consents import Consents
from auxen.billing.ledger import BURNING_STATES
from auxen.store.models import CapScope, InstanceState, KeyKind, Role, User, Workspace, as_utc
from auxen.tools import billing, instances, kb, keys, payments, usage
from auxen.tools.context import Caller
from auxen.tools.errors import AuxenError, InvalidArgument
from auxen.tools.permissions import Permission
from auxen.tools.views import micros_to_usd
from auxen.web.pages import (
    SECURITY_HEADERS,
    Pages,
    content_security_policy,
    error_status,
)

PAGE_SIZE = 50
MODE_COOKIE = "auxen_mode"
USAGE_WINDOWS = (7, 30, 90)
# Buying credits posts here and is redirected to Stripe's hosted page: the billing page's
# CSP lets its forms end up there, and nowhere else off the site.
STRIPE_CHECKOUT = "https://checkout.stripe.com"
Form = dict[str, Any]


@dataclass(frozen=True)
class Visit:
    """Who is looking, at which workspace, in which mode."""

    user: User
    workspace: Workspace
    role: Role
    caller: Caller

    @property
    def livemode(self) -> bool:
        return self.caller.livemode


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: str


@dataclass(frozen=True)
class Chart:
    """A bar chart as SVG geometry (drawn by the template; no script, no inline style)."""

    title: str
    bars: list[Bar]
    width: int
    height: int
    top: str  # the value the full height stands for


def bar_chart(title: str, points: list[tuple[str, int]], fmt: Callable[[int], str]) -> Chart:
    width, height, gap = 640, 160, 2
    top = max((v for _, v in points), default=0)
    step = width / max(len(points), 1)
    bars = []
    for i, (label, value) in enumerate(points):
        h = round(value / top * (height - 4), 2) if top else 0
        bars.append(Bar(round(i * step, 2), height - h, max(step - gap, 1), h, label, fmt(value)))
    return Chart(title, bars, width, height, fmt(top))


def usd(micros: int) -> str:
    """Dollars for people: cents once there are any, every digit below a cent."""
    sign, micros = ("-" if micros < 0 else ""), abs(micros)
    if micros == 0 or micros >= 10_000:
        return f"{sign}${micros / 1_000_000:,.2f}"
    return f"{sign}${micros_to_usd(micros)}"


def _page_number(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    return int(raw) if raw.isdigit() and 0 < int(raw) < 100_000 else 1


@dataclass(frozen=True)
class Pager:
    page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // PAGE_SIZE))

    @property
    def offset(self) -> int:
        return (self.page - 1) * PAGE_SIZE


class Dashboard:
    def __init__(self, pages: Pages, consents: Consents) -> None:
        self.pages = pages
        self.rt = pages.rt
        self.consents = consents

    # -- plumbing --------------------------------------------------------------------

    async def _visit(self, request: Request) -> Visit | None:
        user = await self.pages.current_user(request)
        if user is None:
            return None
        livemode = request.cookies.get(MODE_COOKIE) != "test"
        caller = await self.pages.caller_for(request, user, livemode=livemode)
        if caller is None:
            return None
        async with self.rt.db.scoped(caller.workspace_id) as session:
            workspace = await session.get(Workspace, caller.workspace_id)
        if workspace is None:
            return None
        return Visit(user, workspace, caller.role, caller)

    def _render(
        self, request: Request, visit: Visit, template: str, status: int = 200, **context: Any
    ) -> Response:
        return self.pages.render(
            request,
            template,
            status=status,
            user=visit.user,
            workspace=visit.workspace,
            role=visit.role.value,
            livemode=visit.livemode,
            nav=request.url.path,
            usd=usd,
            **context,
        )

    async def _page(
        self, request: Request, build: Callable[[Visit], Awaitable[Response]]
    ) -> Response:
        """A GET page: signed in (else to the sign-in page), typed errors shown."""
        visit = await self._visit(request)
        if visit is None:
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        try:
            return await build(visit)
        except AuxenError as exc:
            return self._render(
                request, visit, "dashboard/problem.html", status=error_status(exc),
                error=exc.message,
            )  # fmt: skip

    async def _posted(
        self,
        request: Request,
        act: Callable[[Visit, Form], Awaitable[Response]],
        again: Callable[..., Awaitable[Response]] | None = None,
    ) -> Response:
        """A form post: CSRF checked first, then signed in; a typed error shows the page
        again (`again`, with the error) and changes nothing."""
        posted = await self.pages.posted_form(request, "/dashboard")
        if isinstance(posted, Response):
            return posted
        visit = await self._visit(request)
        if visit is None:
            return RedirectResponse("/login?next=/dashboard", status_code=303)
        _, form = posted
        try:
            return await act(visit, form)
        except AuxenError as exc:
            status = error_status(exc)
            if again is None:
                return self._render(
                    request, visit, "dashboard/problem.html", status=status, error=exc.message
                )
            return await again(visit, status=status, error=exc.message)

    @staticmethod
    def _back(path: str) -> Response:
        response = RedirectResponse(path, status_code=303)
        response.headers.update(SECURITY_HEADERS)
        return response

    # -- overview --------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        async def build(visit: Visit) -> Response:
            balance = await billing.get_balance(self.rt, visit.caller)
            running = await instances.count_instances(
                self.rt, visit.caller, states=[InstanceState(s) for s in BURNING_STATES]
            )
            week = (await usage.usage_breakdown(self.rt, visit.caller, days=7)).days
            return self._render(
                request, visit, "dashboard/overview.html", balance=balance, running=running,
                total=await instances.count_instances(self.rt, visit.caller),
                week_tokens=sum(d.tokens for d in week),
                week_charged=sum(d.charged_micros for d in week),
                credits=request.query_params.get("credits"),
            )  # fmt: skip

        return await self._page(request, build)

    async def switch_mode(self, request: Request) -> Response:
        async def act(visit: Visit, form: Form) -> Response:
            response = self._back("/dashboard")
            if form.get("mode") == "test":
                response.set_cookie(
                    MODE_COOKIE, "test", httponly=True, secure=self.pages.secure, samesite="lax"
                )
            else:
                response.delete_cookie(MODE_COOKIE, secure=self.pages.secure, httponly=True)
            return response

        return await self._posted(request, act)

    # -- instances -------------------------------------------------------------------

    async def instances(self, request: Request) -> Response:
        async def build(visit: Visit) -> Response:
            state = _state_filter(request)
            pager = Pager(
                _page_number(request),
                await instances.count_instances(
                    self.rt, visit.caller, states=[state] if state else None
                ),
            )
            rows = await instances.list_instances(
                self.rt, visit.caller, state=state, limit=PAGE_SIZE, offset=pager.offset
            )
            cost = await usage.charged_by_instance(self.rt, visit.caller, [i.id for i in rows])
            return self._render(
                request, visit, "dashboard/instances.html", instances=rows, cost=cost,
                pager=pager, state=state.value if state else "", states=list(InstanceState),
                now=datetime.now(UTC), as_utc=as_utc,
            )  # fmt: skip

        return await self._page(request, build)

    async def instance_states(self, request: Request) -> Response:
        """The first page of instances as JSON, for the instances page to poll: the
        session cookie authenticates it, and without CORS only this site can read it."""
        visit = await self._visit(request)
        if visit is None:
            return JSONResponse({"error": "sign in"}, status_code=401, headers=SECURITY_HEADERS)
        state = _state_filter(request)
        rows = await instances.list_instances(
            self.rt, visit.caller, state=state, limit=PAGE_SIZE, offset=0
        )
        cost = await usage.charged_by_instance(self.rt, visit.caller, [i.id for i in rows])
        return JSONResponse(
            {
                "instances": [
                    {
                        "id": i.id,
                        "state": i.state.value,
                        "detail": i.status_detail or "",
                        "cost": usd(cost.get(i.id, 0)),
                    }
                    for i in rows
                ]
            },
            headers=SECURITY_HEADERS,
        )

    async def _destroy_page(
        self, request: Request, visit: Visit, status: int = 200, **context: Any
    ) -> Response:
        found = await instances.get_instance(self.rt, visit.caller, request.path_params["id"][:64])
        cost = await usage.charged_by_instance(self.rt, visit.caller, [found.id])
        return self._render(
            request, visit, "dashboard/destroy.html", status=status, instance=found,
            cost=cost.get(found.id, 0), **context,
        )  # fmt: skip

    async def confirm_destroy(self, request: Request) -> Response:
        return await self._page(request, lambda visit: self._destroy_page(request, visit))

    async def destroy(self, request: Request) -> Response:
        instance_id = request.path_params["id"][:64]

        async def act(visit: Visit, form: Form) -> Response:
            if form.get("confirm", "").strip() != instance_id:
                raise InvalidArgument(
                    f"type the instance id ({instance_id}) to confirm", param="confirm"
                )
            await instances.destroy_instance(self.rt, visit.caller, instance_id)
            return self._back(f"/instances?destroyed={instance_id}")

        return await self._posted(
            request, act, lambda visit, **kw: self._destroy_page(request, visit, **kw)
        )

    # -- API keys --------------------------------------------------------------------

    async def _keys_page(
        self, request: Request, visit: Visit, status: int = 200, **context: Any
    ) -> Response:
        rows = await keys.list_keys(
            self.rt, visit.caller, kind=KeyKind.ACCOUNT, livemode=visit.livemode,
            include_revoked=True, limit=200,
        )  # fmt: skip
        standing = await keys.standings(self.rt, visit.caller, rows)
        return self._render(
            request, visit, "dashboard/keys.html", status=status,
            keys=[(k, standing[k.id]) for k in rows], **context,
        )  # fmt: skip

    async def keys(self, request: Request) -> Response:
        return await self._page(request, lambda visit: self._keys_page(request, visit))

    async def create_key(self, request: Request) -> Response:
        async def act(visit: Visit, form: Form) -> Response:
            name = form.get("name", "").strip()
            if not 1 <= len(name) <= 200:
                raise InvalidArgument("give the key a name (1-200 characters)", param="name")
            _, plaintext = await keys.create_key(
                self.rt, visit.caller, keys.CreateKeyRequest(name=name)
            )
            return await self._keys_page(request, visit, new_key=plaintext, new_name=name)

        return await self._posted(
            request, act, lambda visit, **kw: self._keys_page(request, visit, **kw)
        )

    async def revoke_key(self, request: Request) -> Response:
        async def act(visit: Visit, form: Form) -> Response:
            await keys.revoke_key(self.rt, visit.caller, form.get("key_id", "")[:64])
            return self._back("/keys")

        return await self._posted(request, act)

    # -- knowledge bases -------------------------------------------------------------

    async def knowledge_bases(self, request: Request) -> Response:
        async def build(visit: Visit) -> Response:
            kbs = await kb.list_knowledge_bases(self.rt, visit.caller)
            return self._render(request, visit, "dashboard/kbs.html", kbs=kbs)

        return await self._page(request, build)

    async def knowledge_base(self, request: Request) -> Response:
        async def build(visit: Visit) -> Response:
            kb_id = request.path_params["kb_id"][:64]
            return self._render(
                request, visit, "dashboard/kb.html",
                kb=await kb.get_knowledge_base(self.rt, visit.caller, kb_id),
                documents=await kb.list_documents(self.rt, visit.caller, kb_id),
                attachments=await kb.attachments_of_knowledge_base(self.rt, visit.caller, kb_id),
            )  # fmt: skip

        return await self._page(request, build)

    # -- usage -----------------------------------------------------------------------

    async def usage(self, request: Request) -> Response:
        async def build(visit: Visit) -> Response:
            days = _days(request)
            breakdown = await usage.usage_breakdown(self.rt, visit.caller, days=days)
            daily = breakdown.days
            pager = Pager(_page_number(request), len(breakdown.instances))
            per_instance = breakdown.instances[pager.offset : pager.offset + PAGE_SIZE]
            points = [(d.day.isoformat(), d.tokens) for d in daily]
            spend = [(d.day.isoformat(), d.charged_micros) for d in daily]
            return self._render(
                request, visit, "dashboard/usage.html", days=days, windows=USAGE_WINDOWS,
                daily=daily, per_instance=per_instance, pager=pager,
                tokens_chart=bar_chart("Tokens per day", points, lambda v: f"{v:,}"),
                cost_chart=bar_chart("Cost per day", spend, usd),
            )  # fmt: skip

        return await self._page(request, build)

    async def usage_csv(self, request: Request) -> Response:
        visit = await self._visit(request)
        if visit is None:
            return RedirectResponse("/login?next=/usage", status_code=303)
        days = _days(request)
        out = io.StringIO()
        writer = csv.writer(out)
        breakdown = await usage.usage_breakdown(self.rt, visit.caller, days=days)
        if request.query_params.get("by") == "instance":
            writer.writerow(
                ["instance_id", "model", "state", "requests", "prompt_tokens",
                 "completion_tokens", "charged_usd"]
            )  # fmt: skip
            for r in breakdown.instances:
                writer.writerow(
                    [r.instance_id, r.model, r.state.value, r.requests, r.prompt_tokens,
                     r.completion_tokens, micros_to_usd(r.charged_micros)]
                )  # fmt: skip
            name = f"auxen-usage-by-instance-{days}d.csv"
        else:
            writer.writerow(
                ["day", "requests", "prompt_tokens", "completion_tokens", "charged_usd"]
            )
            for d in breakdown.days:
                writer.writerow(
                    [d.day.isoformat(), d.requests, d.prompt_tokens, d.completion_tokens,
                     micros_to_usd(d.charged_micros)]
                )  # fmt: skip
            name = f"auxen-usage-by-day-{days}d.csv"
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'},
        )

    # -- billing ---------------------------------------------------------------------

    async def _billing_page(
        self, request: Request, visit: Visit, status: int = 200, **context: Any
    ) -> Response:
        balance = await billing.get_balance(self.rt, visit.caller)
        owner = visit.caller.may(Permission.BUY_CREDITS)  # admins and the owner
        pager = Pager(_page_number(request), 0)
        entries, total = (
            await billing.list_ledger(self.rt, visit.caller, limit=PAGE_SIZE, offset=pager.offset)
            if owner
            else ([], 0)
        )
        caps = {(c.scope.value, c.subject or ""): c for c in balance.caps}
        agents = [
            a for a in await self.consents.of_user(visit.user.id)
            if a.workspace_id == visit.workspace.id
        ]  # fmt: skip
        page = self._render(
            request, visit, "dashboard/billing.html", status=status, balance=balance, owner=owner,
            entries=entries, pager=Pager(pager.page, total), caps=caps, agents=agents,
            credits=request.query_params.get("credits"), **context,
        )  # fmt: skip
        page.headers["Content-Security-Policy"] = content_security_policy(
            f"'self' {STRIPE_CHECKOUT}"
        )
        return page

    async def billing(self, request: Request) -> Response:
        return await self._page(request, lambda visit: self._billing_page(request, visit))

    async def checkout(self, request: Request) -> Response:
        async def act(visit: Visit, form: Form) -> Response:
            raw = form.get("amount_usd", "").strip()
            if not raw.isdigit():
                raise InvalidArgument(
                    "enter a whole number of dollars (5 to 10000)", param="amount_usd"
                )
            made = await payments.start_checkout(self.rt, visit.caller, int(raw))
            return RedirectResponse(made.url, status_code=303)

        return await self._posted(
            request, act, lambda visit, **kw: self._billing_page(request, visit, **kw)
        )

    async def set_cap(self, request: Request) -> Response:
        async def act(visit: Visit, form: Form) -> Response:
            scope = form.get("scope", "")
            if scope not in {s.value for s in CapScope}:
                raise InvalidArgument("choose which cap to set", param="scope")
            raw = form.get("amount_usd", "").strip().lstrip("$")
            try:
                amount = None if raw == "" else Decimal(raw)
            except InvalidOperation:
                raise InvalidArgument(
                    "enter an amount in dollars, like 25 or 2.50 (empty removes the cap)",
                    param="amount_usd",
                ) from None
            subject = form.get("subject", "").strip() or None
            try:
                req = billing.CapRequest(
                    scope=CapScope(scope),
                    amount_usd=amount,
                    client_id=subject if scope == CapScope.CLIENT_MONTHLY.value else None,
                    instance_id=subject if scope == CapScope.INSTANCE.value else None,
                )
            except ValueError:
                raise InvalidArgument(
                    "the amount must be between $0 and $1,000,000, to the cent or finer",
                    param="amount_usd",
                ) from None
            await billing.set_spending_cap(self.rt, visit.caller, req)
            return self._back("/billing?saved=cap")

        return await self._posted(
            request, act, lambda visit, **kw: self._billing_page(request, visit, **kw)
        )


def _state_filter(request: Request) -> InstanceState | None:
    raw = request.query_params.get("state", "")
    return InstanceState(raw) if raw in {s.value for s in InstanceState} else None


def _days(request: Request) -> int:
    raw = request.query_params.get("days", "30")
    return int(raw) if raw.isdigit() and int(raw) in USAGE_WINDOWS else 30
