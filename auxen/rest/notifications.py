"""REST for notifications: where events go, webhook endpoints, and the delivery log."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from auxen.httputil import bearer, read_json_body
from auxen.runtime import Runtime
from auxen.tools import notifications
from auxen.tools.errors import InvalidArgument, parse_model


class NotificationsApi:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def preferences(self, request: Request) -> Response:
        caller = await self.rt.auth.authenticate(bearer(request))
        view = await notifications.get_preferences(self.rt, caller)
        return JSONResponse(view.model_dump(mode="json"))

    async def set_preferences(self, request: Request) -> Response:
        caller = await self.rt.auth.authenticate(bearer(request))
        body = await read_json_body(request, self.rt.settings.max_body_bytes)
        req = parse_model(notifications.PreferencesRequest, body)
        view = await notifications.set_preferences(self.rt, caller, req)
        return JSONResponse(view.model_dump(mode="json"))

    async def webhooks(self, request: Request) -> Response:
        caller = await self.rt.auth.authenticate(bearer(request))
        rows = await notifications.list_webhooks(self.rt, caller)
        return JSONResponse({"object": "list", "data": [r.model_dump(mode="json") for r in rows]})

    async def create_webhook(self, request: Request) -> Response:
        caller = await self.rt.auth.authenticate(bearer(request))
        body = await read_json_body(request, self.rt.settings.max_body_bytes)
        req = parse_model(notifications.WebhookRequest, body)
        view = await notifications.create_webhook(self.rt, caller, req)
        return JSONResponse(view.model_dump(mode="json"), status_code=201)

    async def delete_webhook(self, request: Request) -> Response:
        caller = await self.rt.auth.authenticate(bearer(request))
        view = await notifications.delete_webhook(self.rt, caller, request.path_params["id"])
        return JSONResponse({**view.model_dump(mode="json"), "deleted": True})

    async def deliveries(self, request: Request) -> Response:
        caller = await self.rt.auth.authenticate(bearer(request))
        raw = request.query_params.get("limit", "50")
        if not raw.isdigit():
            raise InvalidArgument("limit must be an integer", param="limit")
        rows = await notifications.list_deliveries(self.rt, caller, limit=int(raw))
        return JSONResponse({"object": "list", "data": [r.model_dump(mode="json") for r in rows]})
