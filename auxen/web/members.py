"""Pages for a workspace's people and history: the members page (list, invite, change a
role, remove after a confirmation), accepting an invitation link, and the audit log.
Each acts in the person's current workspace (`Pages.current_workspace`) through the
same operations REST uses, so the permission table applies here too."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from auxen.store.models import Role
from auxen.tools import audit, members
from auxen.tools.context import Caller
from auxen.tools.errors import AuxenError
from auxen.tools.permissions import Permission, role_may
from auxen.web.pages import CsrfError, Pages, client_address, error_status

Form = dict[str, str]


class MemberPages:
    def __init__(self, pages: Pages) -> None:
        self.pages = pages
        self.rt = pages.rt

    def _sign_in(self, request: Request) -> Response:
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)

    def _error(self, request: Request, exc: AuxenError, back: str) -> Response:
        return self.pages.render(
            request, "error.html", status=error_status(exc), error=exc.message,
            back=back,
        )  # fmt: skip

    # -- members ---------------------------------------------------------------------

    async def show(self, request: Request, **context: Any) -> Response:
        user = await self.pages.current_user(request)
        if user is None:
            return self._sign_in(request)
        caller = await self.pages.caller_for(request, user)
        if caller is None:
            return self.pages.render(
                request, "error.html", status=404, error="You are not in any workspace.",
                back="/account",
            )  # fmt: skip
        status = context.pop("status", 200)
        manage = role_may(caller.role, Permission.MEMBERS_MANAGE)
        return self.pages.render(
            request,
            "members.html",
            status=status,
            user=user,
            role=caller.role,
            members=await members.list_members(self.rt, caller),
            invites=[
                i for i in await members.list_invites(self.rt, caller) if i.status == "pending"
            ]
            if manage
            else [],
            manage=manage,
            owner=caller.role is Role.OWNER,
            **{"link": None, "confirm": None, **context},
        )

    async def _posted(
        self, request: Request, act: Callable[[Caller, Form], Awaitable[Response]]
    ) -> Response:
        posted = await self.pages.posted_form(request, "/members")
        if isinstance(posted, Response):
            return posted
        user, form = posted
        caller = await self.pages.caller_for(request, user)
        if caller is None:
            return RedirectResponse("/account", status_code=303)
        try:
            return await act(caller, form)
        except AuxenError as exc:
            return await self.show(request, status=error_status(exc), error=exc.message)

    async def invite(self, request: Request) -> Response:
        async def act(caller: Caller, form: Form) -> Response:
            role = form.get("role", "member")
            if role not in (Role.MEMBER.value, Role.ADMIN.value):
                role = Role.MEMBER.value
            made = await members.create_invite(
                self.rt, caller,
                members.InviteRequest(email=form.get("email", "")[:320] or "-", role=Role(role)),
            )  # fmt: skip
            return await self.show(request, status=201, link=made)

        return await self._posted(request, act)

    async def revoke_invite(self, request: Request) -> Response:
        async def act(caller: Caller, form: Form) -> Response:
            await members.revoke_invite(self.rt, caller, form.get("invite_id", ""))
            return RedirectResponse("/members", status_code=303)

        return await self._posted(request, act)

    async def change_role(self, request: Request) -> Response:
        async def act(caller: Caller, form: Form) -> Response:
            role = form.get("role", "")
            if role not in (Role.MEMBER.value, Role.ADMIN.value):
                return await self.show(request, status=400, error="choose member or admin")
            await members.change_role(
                self.rt, caller, form.get("user_id", ""), members.RoleChange(role=Role(role))
            )
            return RedirectResponse("/members", status_code=303)

        return await self._posted(request, act)

    async def remove(self, request: Request) -> Response:
        """First POST shows a confirmation; the second, with confirm=yes, removes."""

        async def act(caller: Caller, form: Form) -> Response:
            user_id = form.get("user_id", "")
            if form.get("confirm") != "yes":
                found = [m for m in await members.list_members(self.rt, caller)
                         if m.user_id == user_id]  # fmt: skip
                if not found:
                    return await self.show(request, status=404, error="no such member")
                return await self.show(request, confirm=found[0])
            await members.remove_member(self.rt, caller, user_id)
            return RedirectResponse("/members", status_code=303)

        return await self._posted(request, act)

    # -- invitations -----------------------------------------------------------------

    async def invitation(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            pending = await members.open_invite(self.rt, token)
        except AuxenError as exc:
            return self._error(request, exc, "/account")
        user = await self.pages.current_user(request)
        if user is None:
            return self._sign_in(request)
        return self.pages.render(
            request, "invite.html", user=user, invite=pending.invite,
            workspace=pending.workspace, token=token,
            mismatch=user.email != pending.invite.email,
        )  # fmt: skip

    async def accept(self, request: Request) -> Response:
        try:
            await self.pages._check_csrf(request)
        except CsrfError:
            return self.pages._forbidden(request)
        user = await self.pages.current_user(request)
        if user is None:
            return self._sign_in(request)
        try:
            workspace = await members.accept_invite(
                self.rt, user, request.path_params["token"], address=client_address(request),
                user_agent=request.headers.get("user-agent"),
            )  # fmt: skip
        except AuxenError as exc:
            return self._error(request, exc, "/account")
        response = RedirectResponse("/members", status_code=303)
        self.pages.choose_workspace(response, workspace.id)
        return response

    # -- audit log -------------------------------------------------------------------

    async def audit_log(self, request: Request) -> Response:
        user = await self.pages.current_user(request)
        if user is None:
            return self._sign_in(request)
        caller = await self.pages.caller_for(request, user)
        if caller is None:
            return RedirectResponse("/account", status_code=303)
        try:
            page = await audit.list_audit_events(
                self.rt, caller, limit=50, before=request.query_params.get("before") or None
            )
        except AuxenError as exc:
            return self._error(request, exc, "/account")
        return self.pages.render(request, "audit.html", page=page)
