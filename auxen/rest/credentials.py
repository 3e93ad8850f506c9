"""REST for a workspace's own provider credentials (BYOK). The secret goes in once and
never comes back: every answer carries only its fingerprint and last four characters.
There is no MCP tool for these on purpose: a provider secret has no business passing
through an agent's context."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from auxen.httputil import bearer, read_json_body
from auxen.runtime import Runtime
from auxen.tools import credentials
from auxen.tools.errors import parse_model


class CredentialsApi:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def list_all(self, request: Request) -> Response:
        caller = await self.rt.auth.authenticate(bearer(request))
        views = await credentials.list_credentials(self.rt, caller)
        return JSONResponse({"object": "list", "data": [v.model_dump(mode="json") for v in views]})

    async def put(self, request: Request) -> Response:
        caller = await self.rt.auth.authenticate(bearer(request))
        body = await read_json_body(request, self.rt.settings.max_body_bytes)
        req = parse_model(credentials.SetCredentialRequest, body)
        view = await credentials.set_credential(
            self.rt, caller, request.path_params["provider"], req
        )
        return JSONResponse(view.model_dump(mode="json"))

    async def delete(self, request: Request) -> Response:
        caller = await self.rt.auth.authenticate(bearer(request))
        await credentials.delete_credential(self.rt, caller, request.path_params["provider"])
        return Response(status_code=204)
