"""REST endpoints under /v1: instances, keys, usage. Each one authenticates, parses,
calls one operation in `auxen.tools`, and shapes the answer."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from auxen.httputil import read_json_body
from auxen.runtime import Runtime
from auxen.store.models import ApiKey, Instance, InstanceState
from auxen.tools import instances, keys, usage
from auxen.tools.context import Caller
from auxen.tools.errors import InvalidArgument, parse_model
from auxen.tools.views import instance_view, key_view


class RestApi:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def _caller(self, request: Request) -> Caller:
        return await self.rt.auth.for_request(request)

    def _instance(self, instance: Instance) -> dict[str, Any]:
        return instance_view(instance, self.rt.settings.base_url).model_dump(mode="json")

    async def _body(self, request: Request) -> dict[str, object]:
        return await read_json_body(request, self.rt.settings.max_body_bytes)

    # -- instances -------------------------------------------------------------------

    async def provision(self, request: Request) -> Response:
        caller = await self._caller(request)
        req = parse_model(instances.ProvisionRequest, await self._body(request))
        result = await instances.provision_instance(self.rt, caller, req)
        body = self._instance(result.instance)
        body["instance_key"] = result.instance_key
        body["idempotent_replay"] = result.replayed
        return JSONResponse(body, status_code=200 if result.replayed else 202)

    async def list_instances(self, request: Request) -> Response:
        caller = await self._caller(request)
        state_arg = request.query_params.get("state")
        try:
            state = InstanceState(state_arg) if state_arg else None
        except ValueError:
            raise InvalidArgument(
                f"state must be one of: {', '.join(s.value for s in InstanceState)}",
                param="state",
            ) from None
        limit = _int_param(request, "limit", 100)
        rows = await instances.list_instances(self.rt, caller, state=state, limit=limit)
        return JSONResponse({"object": "list", "data": [self._instance(i) for i in rows]})

    async def get_instance(self, request: Request) -> Response:
        caller = await self._caller(request)
        instance = await instances.get_instance(self.rt, caller, request.path_params["id"])
        return JSONResponse(self._instance(instance))

    async def destroy_instance(self, request: Request) -> Response:
        caller = await self._caller(request)
        instance = await instances.destroy_instance(self.rt, caller, request.path_params["id"])
        return JSONResponse(self._instance(instance))

    # -- keys ------------------------------------------------------------------------

    async def create_key(self, request: Request) -> Response:
        caller = await self._caller(request)
        req = parse_model(keys.CreateKeyRequest, await self._body(request))
        row, plaintext = await keys.create_key(self.rt, caller, req)
        return JSONResponse({**await self._key(caller, row), "key": plaintext}, status_code=201)

    async def _key(self, caller: Caller, row: ApiKey) -> dict[str, Any]:
        standing = await keys.standings(self.rt, caller, [row])
        return key_view(row, standing[row.id])

    async def create_instance_key(self, request: Request) -> Response:
        caller = await self._caller(request)
        data = await self._body(request)
        data["instance_id"] = request.path_params["id"]
        req = parse_model(keys.CreateKeyRequest, data)
        row, plaintext = await keys.create_key(self.rt, caller, req)
        return JSONResponse({**await self._key(caller, row), "key": plaintext}, status_code=201)

    async def list_keys(self, request: Request) -> Response:
        caller = await self._caller(request)
        include = request.query_params.get("include_revoked", "false").lower() == "true"
        rows = await keys.list_keys(self.rt, caller, include_revoked=include)
        standing = await keys.standings(self.rt, caller, rows)
        return JSONResponse({"object": "list", "data": [key_view(k, standing[k.id]) for k in rows]})

    async def revoke_key(self, request: Request) -> Response:
        caller = await self._caller(request)
        row = await keys.revoke_key(self.rt, caller, request.path_params["id"])
        return JSONResponse(await self._key(caller, row))

    # -- usage -----------------------------------------------------------------------

    async def usage(self, request: Request) -> Response:
        caller = await self._caller(request)
        since_arg = request.query_params.get("since")
        since = usage.parse_since(since_arg) if since_arg else None
        summary = await usage.get_usage(
            self.rt, caller, instance_id=request.query_params.get("instance_id"), since=since
        )
        return JSONResponse(summary.model_dump(mode="json"))


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer", param=name) from None
