"""The account page: workspaces, the email address (a new confirmation link while it is
unconfirmed), the password, the second factor (set up with a QR code, recovery codes,
turn off) and the agents the person has allowed in (revoke any of them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from auxen.auth import passwords, web_sessions
from auxen.auth.oauth import SCOPE_DESCRIPTIONS
from auxen.auth.oauth.consents import Consents
from auxen.billing.alerts import recent_alerts
from auxen.notify.account_mail import send_account_mail
from auxen.store.models import Role, User
from auxen.tools import accounts, audit, mfa
from auxen.tools.errors import AuxenError, RateLimited
from auxen.web.pages import Pages, _safe_next, client_address, error_status

Form = dict[str, Any]


class AccountPages:
    def __init__(self, pages: Pages, consents: Consents) -> None:
        self.pages = pages
        self.rt = pages.rt
        self.consents = consents

    async def show(self, request: Request) -> Response:
        user = await self.pages.current_user(request)
        if user is None:
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        return await self._render(request, user)

    async def _render(
        self, request: Request, user: User, status: int = 200, **context: Any
    ) -> Response:
        workspaces = await accounts.workspaces_of(self.rt, user)
        alerts = [
            alert
            for workspace, role in workspaces
            if role in (Role.OWNER, Role.ADMIN)
            for alert in await recent_alerts(self.rt.db, workspace.id, True, limit=5)
        ]
        current = await self.pages.current_workspace(request, user)
        return self.pages.render(
            request,
            "account.html",
            status=status,
            user=user,
            current_workspace=current[0] if current else None,
            alerts=sorted(alerts, key=lambda a: a.created_at, reverse=True)[:5],
            workspaces=workspaces,
            recovery_left=await mfa.unused_recovery_codes(self.rt, user) if user.has_totp else 0,
            apps=await self.consents.of_user(user.id),
            scope_descriptions=SCOPE_DESCRIPTIONS,
            min_password=passwords.MIN_LENGTH,
            email_unproven=accounts.needs_email_proof(self.rt, user),
            **context,
        )

    async def _posted(
        self, request: Request, act: Callable[[User, Form], Awaitable[Response]]
    ) -> Response:
        """A POST from the account page: CSRF checked, signed in, typed errors shown on
        the page (429 with Retry-After when throttled)."""
        posted = await self.pages.posted_form(request, "/account")
        if isinstance(posted, Response):
            return posted
        user, form = posted
        try:
            return await act(user, form)
        except RateLimited as exc:
            page = await self._render(request, user, status=429, error=exc.message)
            page.headers["Retry-After"] = str(exc.retry_after_s)
            return page
        except AuxenError as exc:
            return await self._render(request, user, status=error_status(exc), error=exc.message)

    # -- the email address -------------------------------------------------------------

    async def send_confirmation(self, request: Request) -> Response:
        async def act(user: User, form: Form) -> Response:
            mail = await accounts.confirmation_for(self.rt, user)
            sent = RedirectResponse("/account?confirm=sent", status_code=303)
            sent.background = BackgroundTask(send_account_mail, self.rt.settings, mail)
            return sent

        return await self._posted(request, act)

    # -- password --------------------------------------------------------------------

    async def change_password(self, request: Request) -> Response:
        async def act(user: User, form: Form) -> Response:
            await accounts.change_password(
                self.rt, user, current=form.get("current_password", ""),
                new=form.get("new_password", ""), address=client_address(request),
            )  # fmt: skip
            await web_sessions.end_others(
                self.rt.db, user.id, request.cookies.get(self.pages.session_cookie)
            )
            return RedirectResponse("/account?password=changed", status_code=303)

        return await self._posted(request, act)

    # -- second factor ---------------------------------------------------------------

    async def mfa_setup(self, request: Request) -> Response:
        async def act(user: User, form: Form) -> Response:
            enrolment = mfa.begin_enrolment(self.rt, user)
            return self.pages.render(request, "mfa_setup.html", enrolment=enrolment)

        return await self._posted(request, act)

    async def mfa_enable(self, request: Request) -> Response:
        async def act(user: User, form: Form) -> Response:
            token = form.get("token", "")
            try:
                codes = await mfa.confirm_enrolment(
                    self.rt, user, token=token, code=form.get("code", ""),
                    address=client_address(request),
                )  # fmt: skip
            except AuxenError as exc:
                if exc.param != "code":
                    raise
                return self.pages.render(
                    request, "mfa_setup.html", status=400, error=exc.message,
                    enrolment=mfa.reopen_enrolment(self.rt, user, token),
                )  # fmt: skip
            await self._audit(request, user, "mfa.enable")
            return self.pages.render(request, "recovery_codes.html", codes=codes, new=True)

        return await self._posted(request, act)

    async def recovery_codes(self, request: Request) -> Response:
        async def act(user: User, form: Form) -> Response:
            codes = await mfa.replace_recovery_codes(
                self.rt, user, code=form.get("code", ""), address=client_address(request)
            )
            await self._audit(request, user, "mfa.recovery_codes")
            return self.pages.render(request, "recovery_codes.html", codes=codes, new=False)

        return await self._posted(request, act)

    async def mfa_disable(self, request: Request) -> Response:
        async def act(user: User, form: Form) -> Response:
            await mfa.disable(
                self.rt, user, password=form.get("password", ""), code=form.get("code", ""),
                address=client_address(request),
            )  # fmt: skip
            await self._audit(request, user, "mfa.disable")
            return RedirectResponse("/account", status_code=303)

        return await self._posted(request, act)

    async def _audit(self, request: Request, user: User, action: str) -> None:
        await audit.record_for_user(
            self.rt.db, user.id, user.email, action, address=client_address(request),
            user_agent=request.headers.get("user-agent"),
        )  # fmt: skip

    # -- the current workspace -------------------------------------------------------

    async def choose_workspace(self, request: Request) -> Response:
        async def act(user: User, form: Form) -> Response:
            chosen = form.get("workspace_id", "")
            mine = {w.id for w, _ in await accounts.workspaces_of(self.rt, user)}
            response = RedirectResponse(_back(form.get("next")), status_code=303)
            if chosen in mine:
                self.pages.choose_workspace(response, chosen)
            return response

        return await self._posted(request, act)

    # -- connected agents ------------------------------------------------------------

    async def revoke_app(self, request: Request) -> Response:
        async def act(user: User, form: Form) -> Response:
            revoked = await self.consents.revoke(user.id, form.get("consent_id", ""))
            if revoked is not None:
                await audit.record(
                    self.rt.db, revoked.workspace_id,
                    audit.Actor.person(user.id, user.email, client_address(request)),
                    "oauth.consent_revoke", target_type="oauth_client",
                    target_id=revoked.client_id,
                )  # fmt: skip
            return RedirectResponse("/account", status_code=303)

        return await self._posted(request, act)


def _back(next_url: str | None) -> str:
    return _safe_next(next_url, "/account")
