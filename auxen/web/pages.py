"""Sign up (and confirm the email address), sign in (password, then the second factor
when it is on), sign out.

Every form carries a CSRF token that must equal the `auxen_csrf` cookie (double submit;
the cookie is HttpOnly, SameSite=Strict and, over https, `__Host-` bound to this host),
so a POST from another site fails with 403 before anything happens. Pages are never
framed or cached.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from auxen.auth import passwords, web_sessions
from auxen.auth.authenticate import with_origin
from auxen.auth.sealing import SealedTokens
from auxen.notify import Event, EventType, notify_user
from auxen.notify.account_mail import send_account_mail
from auxen.rest.errors import status_of
from auxen.runtime import Runtime
from auxen.store.models import Role, User
from auxen.tools import accounts, audit, mfa
from auxen.tools.context import Caller
from auxen.tools.errors import AuxenError, RateLimited

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
STATIC_DIR = Path(__file__).parent / "static"
# A browser is "known" to the people who signed in on it: its device cookie (sealed, so
# it cannot be forged or read) lists them. Browsers keep a cookie at most 400 days.
DEVICE_TTL_S = 400 * 24 * 3600
DEVICE_USERS = 10


def content_security_policy(form_action: str = "'self'") -> str:
    return f"default-src 'self'; frame-ancestors 'none'; form-action {form_action}; base-uri 'none'"


SECURITY_HEADERS = {
    "Content-Security-Policy": content_security_policy(),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class CsrfError(Exception):
    pass


class Pages:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.session_cookie = web_sessions.cookie_name(rt.settings, "auxen_session")
        self.csrf_cookie = web_sessions.cookie_name(rt.settings, "auxen_csrf")
        self.mfa_cookie = web_sessions.cookie_name(rt.settings, "auxen_mfa")
        self.workspace_cookie = web_sessions.cookie_name(rt.settings, "auxen_workspace")
        self.device_cookie = web_sessions.cookie_name(rt.settings, "auxen_device")
        self.devices = SealedTokens(rt.settings.master_key_bytes, "known-device")
        self.challenges = mfa.challenges(rt)
        self.secure = web_sessions.secure_cookies(rt.settings)

    # -- plumbing --------------------------------------------------------------------

    async def current_user(self, request: Request) -> User | None:
        return await web_sessions.user_for(self.rt.db, request.cookies.get(self.session_cookie))

    async def current_workspace(
        self, request: Request, user: User | None = None
    ) -> tuple[str, Role] | None:
        """The workspace the signed-in person is working in, and their role there: the
        one they picked on the account page (a cookie, checked against their memberships
        on every request), else their first. None when signed out or in no workspace."""
        user = user or await self.current_user(request)
        if user is None:
            return None
        workspaces = await accounts.workspaces_of(self.rt, user)
        if not workspaces:
            return None
        chosen = request.cookies.get(self.workspace_cookie)
        for workspace, role in workspaces:
            if workspace.id == chosen:
                return workspace.id, role
        return workspaces[0][0].id, workspaces[0][1]

    async def caller_for(
        self, request: Request, user: User, *, livemode: bool = True
    ) -> Caller | None:
        """The signed-in person acting in their current workspace, with their role there
        and where they are (for the audit log); None when they are in no workspace."""
        current = await self.current_workspace(request, user)
        if current is None:
            return None
        workspace_id, role = current
        caller = Caller(
            workspace_id=workspace_id, livemode=livemode, user_id=user.id, role=role,
            email_unproven=accounts.needs_email_proof(self.rt, user),
        )  # fmt: skip
        return with_origin(caller, request)

    def choose_workspace(self, response: Response, workspace_id: str) -> None:
        response.set_cookie(
            self.workspace_cookie, workspace_id, max_age=365 * 24 * 3600, httponly=True,
            secure=self.secure, samesite="lax",
        )  # fmt: skip

    def _csrf(self, request: Request) -> tuple[str, bool]:
        """The browser's CSRF token, and whether it still has to be set as a cookie."""
        token = request.cookies.get(self.csrf_cookie)
        if token and 20 <= len(token) <= 100:
            return token, False
        return secrets.token_urlsafe(32), True

    async def _check_csrf(self, request: Request) -> dict[str, Any]:
        form = await request.form(max_files=0, max_fields=20)
        sent = form.get("csrf_token")
        cookie = request.cookies.get(self.csrf_cookie)
        if not (
            isinstance(sent, str) and cookie and hmac.compare_digest(sent.encode(), cookie.encode())
        ):
            raise CsrfError
        return {k: v for k, v in form.items() if isinstance(v, str)}

    def render(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> Response:
        token, new = self._csrf(request)
        response = TEMPLATES.TemplateResponse(
            request, template, {"csrf_token": token, "error": None, **context}, status_code=status
        )
        if new:
            response.set_cookie(
                self.csrf_cookie, token, httponly=True, secure=self.secure, samesite="strict"
            )
        response.headers.update(SECURITY_HEADERS)
        return response

    def _signed_in(self, token: str, next_url: str) -> Response:
        response = RedirectResponse(next_url, status_code=303)
        response.delete_cookie(self.mfa_cookie, secure=self.secure, httponly=True)
        response.set_cookie(
            self.session_cookie,
            token,
            max_age=int(web_sessions.SESSION_TTL.total_seconds()),
            httponly=True,
            secure=self.secure,
            samesite="lax",
        )
        response.headers.update(SECURITY_HEADERS)
        return response

    async def _known_device(
        self, request: Request, response: Response, user_id: str, *, first: bool = False
    ) -> Response:
        """Remember that `user_id` signed in on this browser; the first sign-in of an
        account on a browser it was never used on (not its sign-up) is told to the person
        and their workspaces' owners, with the address and browser, never the password."""
        known = self.devices.open(request.cookies.get(self.device_cookie)) or {}
        users = [u for u in known.get("users", []) if isinstance(u, str)]
        if user_id not in users:
            if not first:
                await notify_user(
                    self.rt.db,
                    user_id,
                    Event(
                        EventType.NEW_SIGN_IN,
                        {
                            "user_id": user_id,
                            "address": client_address(request)[:64],
                            "browser": request.headers.get("user-agent", "unknown")[:200],
                        },
                    ),
                )
            users = [*users, user_id][-DEVICE_USERS:]
        response.set_cookie(
            self.device_cookie,
            self.devices.issue({"users": users}, DEVICE_TTL_S),
            max_age=DEVICE_TTL_S,
            httponly=True,
            secure=self.secure,
            samesite="lax",
        )
        return response

    async def posted_form(
        self, request: Request, back: str
    ) -> tuple[User, dict[str, Any]] | Response:
        """A form POST of a signed-in person: the CSRF token checked first, then the
        session. Otherwise the response to send: 403, or the sign-in page (then `back`)."""
        try:
            form = await self._check_csrf(request)
        except CsrfError:
            return self._forbidden(request)
        user = await self.current_user(request)
        if user is None:
            return RedirectResponse(f"/login?next={back}", status_code=303)
        return user, form

    def _forbidden(self, request: Request) -> Response:
        return self.render(
            request,
            "error.html",
            status=403,
            error="This form expired or came from another site. Reload the page and try again.",
            back=request.url.path,
        )

    # -- pages -----------------------------------------------------------------------

    async def signup_form(self, request: Request) -> Response:
        return self.render(
            request,
            "signup.html",
            email="",
            workspace="",
            next=_safe_next(request.query_params.get("next")),
            min_password=passwords.MIN_LENGTH,
        )

    async def signup(self, request: Request) -> Response:
        try:
            form = await self._check_csrf(request)
        except CsrfError:
            return self._forbidden(request)
        email, workspace = form.get("email", ""), form.get("workspace", "")
        next_url = _safe_next(form.get("next"))
        try:
            answer = await accounts.sign_up(
                self.rt, email=email, password=form.get("password", ""), workspace_name=workspace,
                address=client_address(request), next_url=next_url,
            )  # fmt: skip
        except AuxenError as exc:
            page = self.render(
                request,
                "signup.html",
                status=error_status(exc),
                error=exc.message,
                email=email[:320],
                workspace=workspace[:200],
                next=next_url,
                min_password=passwords.MIN_LENGTH,
            )
            if isinstance(exc, RateLimited):
                page.headers["Retry-After"] = str(exc.retry_after_s)
            return page
        if answer.signed_up is None:
            # Email proof is on: the same answer whether or not the address had an
            # account; what differs goes by email, after the answer is sent.
            sent = RedirectResponse("/signup/sent", status_code=303)
            sent.headers.update(SECURITY_HEADERS)
            if answer.mail is not None:
                sent.background = BackgroundTask(send_account_mail, self.rt.settings, answer.mail)
            return sent
        user_id = answer.signed_up.user.id
        signed_in = self._signed_in(await web_sessions.start(self.rt.db, user_id), next_url)
        return await self._known_device(request, signed_in, user_id, first=True)

    async def signup_sent(self, request: Request) -> Response:
        return self.render(request, "signup_sent.html")

    async def confirm_form(self, request: Request) -> Response:
        """The page a confirmation link opens: a button, so a mail scanner that fetches
        links confirms nothing."""
        token = request.query_params.get("token", "")
        try:
            proof = accounts.open_confirmation(self.rt, token)
        except AuxenError as exc:
            return self.render(request, "error.html", status=400, error=exc.message, back="/login")
        return self.render(request, "confirm_email.html", token=token, email=proof.email)

    async def confirm(self, request: Request) -> Response:
        try:
            form = await self._check_csrf(request)
        except CsrfError:
            return self._forbidden(request)
        try:
            proof = await accounts.confirm_email(self.rt, form.get("token", ""))
        except AuxenError as exc:
            return self.render(request, "error.html", status=400, error=exc.message, back="/login")
        user = await self.current_user(request)
        if user is not None and user.id == proof.user_id:
            return RedirectResponse(proof.next_url, status_code=303)
        to_login = f"/login?{urlencode({'next': proof.next_url, 'confirmed': '1'})}"
        return RedirectResponse(to_login, status_code=303)

    async def login_form(self, request: Request) -> Response:
        return self.render(
            request, "login.html", email="", next=_safe_next(request.query_params.get("next")),
            confirmed=request.query_params.get("confirmed") == "1",
        )  # fmt: skip

    async def login(self, request: Request) -> Response:
        try:
            form = await self._check_csrf(request)
        except CsrfError:
            return self._forbidden(request)
        email = form.get("email", "")
        next_url = _safe_next(form.get("next"))
        address = client_address(request)
        try:
            user = await accounts.sign_in(
                self.rt, email=email, password=form.get("password", ""), address=address
            )
        except RateLimited as exc:
            page = self.render(
                request, "login.html", status=429, error=exc.message, email=email[:320],
                next=next_url,
            )  # fmt: skip
            page.headers["Retry-After"] = str(exc.retry_after_s)
            return page
        except AuxenError as exc:
            page = self.render(
                request, "login.html", status=401, error=exc.message, email=email[:320],
                next=next_url,
            )  # fmt: skip
            # After the answer is sent: the response time must not tell whether the
            # email has an account.
            page.background = BackgroundTask(
                audit.record_failed_login, self.rt.db, email, address, _agent(request)
            )
            return page
        if user.has_totp:
            # The password was right; the session starts only after the second factor.
            challenge = self.challenges.issue({"user_id": user.id}, mfa.CHALLENGE_TTL_S)
            response = RedirectResponse(
                f"/login/mfa?{urlencode({'next': next_url})}", status_code=303
            )
            response.set_cookie(
                self.mfa_cookie,
                challenge,
                max_age=mfa.CHALLENGE_TTL_S,
                httponly=True,
                secure=self.secure,
                samesite="lax",
            )
            response.headers.update(SECURITY_HEADERS)
            return response
        return await self._finish_sign_in(request, user, next_url, mfa=False)

    async def _finish_sign_in(
        self, request: Request, user: User, next_url: str, *, mfa: bool
    ) -> Response:
        """Every factor given: audit it, start the session, remember the browser."""
        await audit.record_for_user(
            self.rt.db, user.id, user.email, "login.success", address=client_address(request),
            user_agent=_agent(request), detail={"mfa": mfa},
        )  # fmt: skip
        signed_in = self._signed_in(await web_sessions.start(self.rt.db, user.id), next_url)
        return await self._known_device(request, signed_in, user.id)

    def _challenged_user(self, request: Request) -> str | None:
        challenge = self.challenges.open(request.cookies.get(self.mfa_cookie))
        return str(challenge["user_id"]) if challenge else None

    async def mfa_form(self, request: Request) -> Response:
        next_url = _safe_next(request.query_params.get("next"))
        if self._challenged_user(request) is None:
            return RedirectResponse(f"/login?{urlencode({'next': next_url})}", status_code=303)
        return self.render(request, "login_mfa.html", next=next_url)

    async def mfa(self, request: Request) -> Response:
        try:
            form = await self._check_csrf(request)
        except CsrfError:
            return self._forbidden(request)
        next_url = _safe_next(form.get("next"))
        user_id = self._challenged_user(request)
        if user_id is None:
            return self.render(
                request, "login.html", status=401, email="", next=next_url,
                error="Your sign-in took too long. Enter your password again.",
            )  # fmt: skip
        try:
            user = await mfa.verify_second_factor(
                self.rt, user_id, form.get("code", ""), address=client_address(request)
            )
        except RateLimited as exc:
            page = self.render(request, "login_mfa.html", status=429, error=exc.message,
                               next=next_url)  # fmt: skip
            page.headers["Retry-After"] = str(exc.retry_after_s)
            return page
        except AuxenError as exc:
            await audit.record_for_user(
                self.rt.db, user_id, "", "login.failure", address=client_address(request),
                user_agent=_agent(request), detail={"mfa": True},
            )  # fmt: skip
            return self.render(
                request, "login_mfa.html", status=401, error=exc.message, next=next_url
            )
        return await self._finish_sign_in(request, user, next_url, mfa=True)

    async def logout(self, request: Request) -> Response:
        try:
            await self._check_csrf(request)
        except CsrfError:
            return self._forbidden(request)
        await web_sessions.end(self.rt.db, request.cookies.get(self.session_cookie))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(self.session_cookie, secure=self.secure, httponly=True)
        return response


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _agent(request: Request) -> str | None:
    agent = request.headers.get("user-agent")
    return agent[: audit.USER_AGENT_MAX] if agent else None


def _safe_next(value: str | None, default: str = "/dashboard") -> str:
    """Only a path on this site: never an absolute or scheme-relative URL (open redirect).
    Without one, people land on the dashboard."""
    if not value or len(value) > 2000:
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//"):
        return default
    if "\\" in value:
        return default
    return value


def error_status(exc: AuxenError) -> int:
    """The HTTP status a page answers a typed error with (the same as the REST API's)."""
    return status_of(exc)[0]
