"""REST for conversation history: a query that continues a conversation, and the
conversations an instance keeps. Thin adapters over `auxen.tools`.

The OpenAI-compatible endpoints stay stateless: they never keep a conversation."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from auxen.httputil import bearer, read_json_body
from auxen.runtime import Runtime
from auxen.tools import conversations, query
from auxen.tools.errors import InvalidArgument, parse_model


class ConversationsApi:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def query(self, request: Request) -> Response:
        caller = await self.rt.auth.authenticate(bearer(request))
        body = await read_json_body(request, self.rt.settings.max_body_bytes)
        body["instance_id"] = request.path_params["id"]
        req = parse_model(query.QueryRequest, body)
        result = await query.query_instance(self.rt, caller, req)
        return JSONResponse(result.model_dump(mode="json"))

    async def list_for_instance(self, request: Request) -> Response:
        caller = await self.rt.auth.authenticate(bearer(request))
        raw = request.query_params.get("limit", "50")
        if not raw.isdigit():
            raise InvalidArgument("limit must be an integer", param="limit")
        found = await conversations.list_conversations(
            self.rt, caller, request.path_params["id"], limit=int(raw)
        )
        return JSONResponse(
            {"object": "list", "data": [c.model_dump(mode="json") for c in found.conversations]}
        )

    async def get(self, request: Request) -> Response:
        caller = await self.rt.auth.authenticate(bearer(request))
        view = await conversations.get_conversation(self.rt, caller, request.path_params["id"])
        return JSONResponse(view.model_dump(mode="json"))

    async def delete(self, request: Request) -> Response:
        caller = await self.rt.auth.authenticate(bearer(request))
        return JSONResponse(
            await conversations.delete_conversation(self.rt, caller, request.path_params["id"])
        )
