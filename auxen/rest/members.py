"""REST for people and the workspace: members, invitations, ownership, deleting the
workspace, and the audit log. Members join by invitation only, so `POST /v1/members`
and `POST /v1/invites` both invite."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from auxen.httputil import read_json_body
from auxen.runtime import Runtime
from auxen.tools import audit, members
from auxen.tools.errors import InvalidArgument, parse_model


class MembersApi:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def _body(self, request: Request) -> dict[str, object]:
        return await read_json_body(request, self.rt.settings.max_body_bytes)

    async def list_members(self, request: Request) -> Response:
        caller = await self.rt.auth.for_request(request)
        rows = await members.list_members(self.rt, caller)
        return JSONResponse({"object": "list", "data": [m.model_dump(mode="json") for m in rows]})

    async def invite(self, request: Request) -> Response:
        caller = await self.rt.auth.for_request(request)
        req = parse_model(members.InviteRequest, await self._body(request))
        made = await members.create_invite(self.rt, caller, req)
        return JSONResponse(made.model_dump(mode="json"), status_code=201)

    async def change_role(self, request: Request) -> Response:
        caller = await self.rt.auth.for_request(request)
        req = parse_model(members.RoleChange, await self._body(request))
        view = await members.change_role(self.rt, caller, request.path_params["user_id"], req)
        return JSONResponse(view.model_dump(mode="json"))

    async def remove(self, request: Request) -> Response:
        caller = await self.rt.auth.for_request(request)
        view = await members.remove_member(self.rt, caller, request.path_params["user_id"])
        return JSONResponse({**view.model_dump(mode="json"), "removed": True})

    async def list_invites(self, request: Request) -> Response:
        caller = await self.rt.auth.for_request(request)
        rows = await members.list_invites(self.rt, caller)
        return JSONResponse({"object": "list", "data": [i.model_dump(mode="json") for i in rows]})

    async def revoke_invite(self, request: Request) -> Response:
        caller = await self.rt.auth.for_request(request)
        view = await members.revoke_invite(self.rt, caller, request.path_params["id"])
        return JSONResponse(view.model_dump(mode="json"))

    async def transfer(self, request: Request) -> Response:
        caller = await self.rt.auth.for_request(request)
        req = parse_model(members.TransferRequest, await self._body(request))
        view = await members.transfer_ownership(self.rt, caller, req)
        return JSONResponse(view.model_dump(mode="json"))

    async def delete_workspace(self, request: Request) -> Response:
        caller = await self.rt.auth.for_request(request)
        done = await members.delete_workspace(self.rt, caller, request.query_params.get("confirm"))
        return JSONResponse(done.model_dump(mode="json"))

    async def audit_log(self, request: Request) -> Response:
        caller = await self.rt.auth.for_request(request)
        raw = request.query_params.get("limit", "50")
        if not raw.isdigit():
            raise InvalidArgument("limit must be an integer", param="limit")
        page = await audit.list_audit_events(
            self.rt, caller, limit=int(raw), before=request.query_params.get("before")
        )
        return JSONResponse(
            {"object": "list", "data": [e.model_dump(mode="json") for e in page.events],
             "next_before": page.next_before},
        )  # fmt: skip
