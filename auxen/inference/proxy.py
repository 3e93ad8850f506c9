"""The OpenAI-compatible proxy in front of each instance's vLLM server.

`/v1/instances/{id}/chat/completions`, `/completions` and `/models` are forwarded to the
instance's upstream with the upstream key (which never leaves the control plane). SSE
streams are relayed event by event as they arrive. Upstream is always asked for
`stream_options.include_usage`; that extra usage chunk is stripped unless the caller
asked for it. Each call leaves a UsageRecord with counts and timings, never text; the
request and response bodies are never logged. Bodies pass `passthrough.sanitise` first:
only known generation fields are forwarded, and nothing that carries a credential.

On `chat/completions`, an instance with knowledge bases attached gets the passages that
best match the latest user turn as numbered sources in the system message; the answer
carries `citations` (non-streamed: a top-level field; streamed: on the first chunk).
The caller turns this off or sets how many passages with a `retrieval` body field
(`false`, or `{"enabled": bool, "top_k": 1-20}`), which never goes upstream.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from auxen.httputil import bearer, openai_error, read_json_body
from auxen.inference.gateway import Meter, Target, caller_status, upstream_error
from auxen.inference.passthrough import sanitise
from auxen.inference.upstream import UpstreamError, UpstreamResponse
from auxen.runtime import Runtime
from auxen.tools.context import Caller
from auxen.tools.errors import InvalidArgument
from auxen.tools.kb import MAX_TOP_K, retrieve_for_instance
from auxen.tools.query import citations_of, latest_user_turn, with_sources
from auxen.tools.views import Citation

log = logging.getLogger(__name__)


class InferenceProxy:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.gateway = rt.gateway

    async def authorize(self, request: Request) -> tuple[Caller, Target]:
        caller = await self.rt.auth.authenticate(bearer(request))
        target = await self.gateway.authorize(caller, request.path_params["instance_id"])
        return caller, target

    # -- endpoints -------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        _, target = await self.authorize(request)
        try:
            upstream = await self.gateway.upstream.request(
                "GET", f"{target.base_url}/v1/models", target.headers
            )
            content = await upstream.read()
        except UpstreamError:
            return _unreachable(target)
        return _relay_json(upstream.status, content)

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, "chat/completions")

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completions")

    async def _generate(self, request: Request, path: str) -> Response:
        started = time.perf_counter()
        caller, target = await self.authorize(request)
        limit = self.rt.settings.max_body_bytes
        body = await read_json_body(request, limit, check=sanitise, nul_ok=True)
        model = body.get("model")
        if model is None:
            body["model"] = target.model
        elif model != target.model:
            return openai_error(
                404,
                f"The model {str(model)[:200]!r} is not served by this instance; it serves "
                f"{target.model!r}",
                type_="invalid_request_error",
                param="model",
                code="model_not_found",
            )
        citations: list[Citation] = []
        if path == "chat/completions":
            citations = await self._retrieve(target, body)
        stream = body.get("stream") is True
        wants_usage = False
        if stream:
            options = body.get("stream_options")
            if options is None:
                options = {}
            if not isinstance(options, dict):
                raise InvalidArgument("stream_options must be an object", param="stream_options")
            wants_usage = options.get("include_usage") is True
            body["stream_options"] = {**options, "include_usage": True}
        if not stream:
            try:
                done = await self.gateway.complete(caller, target, path, body, started=started)
            except UpstreamError:
                return _unreachable(target)
            if citations and done.status < 400:
                return _with_citations(done.content, citations)
            return _relay_json(done.status, done.content)
        hold = await self.gateway.reserve(caller, target, path, body)
        meter = self.gateway.meter(caller, target, path, stream=True, started=started, hold=hold)
        try:
            upstream = await self.gateway.send(target, path, body)
        except UpstreamError:
            meter.finish(502, "upstream_unreachable")
            return _unreachable(target)
        if upstream.status >= 400:
            try:
                content = await upstream.read()
            except UpstreamError:
                meter.finish(502, "upstream_error")
                return _unreachable(target)
            finally:
                upstream.close()
            meter.finish(caller_status(upstream.status), "error")
            return _relay_json(upstream.status, content)
        return StreamingResponse(
            self._relay_stream(upstream, meter, wants_usage, citations),
            status_code=upstream.status,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _retrieve(self, target: Target, body: dict[str, Any]) -> list[Citation]:
        """Put sources from attached knowledge bases into `body`; their citations."""
        enabled, top_k = _retrieval_options(body.pop("retrieval", None))
        messages = body.get("messages")
        if not enabled or not isinstance(messages, list):
            return []
        if not all(isinstance(m, dict) for m in messages):
            return []  # vLLM words the error
        passages = await retrieve_for_instance(
            self.rt, target.workspace_id, target.instance_id, latest_user_turn(messages), top_k
        )
        if passages:
            body["messages"] = with_sources(messages, passages)
        return citations_of(passages)

    async def _relay_stream(
        self,
        upstream: UpstreamResponse,
        meter: Meter,
        wants_usage: bool,
        citations: list[Citation] | None = None,
    ) -> AsyncIterator[bytes]:
        outcome = "client_closed"
        pending = b""
        meter.open()
        try:
            async for chunk in upstream.iter_chunks():
                pending += chunk
                events = pending.split(b"\n\n")
                pending = events.pop()
                out = []
                for event in events:
                    if citations and event.startswith(b"data: {"):
                        event, citations = _event_with_citations(event, citations), None
                    if event.startswith(b"data: [DONE]"):
                        outcome = "ok"  # the caller may hang up as soon as it has this
                    if meter.observe_event(event) or wants_usage:
                        out.append(event + b"\n\n")
                if out:
                    yield b"".join(out)
            if pending.strip():
                yield pending
            outcome = "ok"
        except UpstreamError:
            outcome = "upstream_error"
            log.warning("upstream of %s broke off mid-stream", meter.target.instance_id)
            error = {
                "error": {
                    "message": "the instance's inference server stopped mid-stream; "
                    "the partial answer above is incomplete",
                    "type": "api_error",
                    "param": None,
                    "code": "upstream_disconnected",
                }
            }
            yield b"data: " + json.dumps(error).encode() + b"\n\n"
        finally:
            upstream.close()
            # Headers went out as 200; the outcome says how the stream ended.
            meter.finish(200, outcome)


def _retrieval_options(value: object) -> tuple[bool, int]:
    """(enabled, top_k) from the request's `retrieval` field."""
    if value is None or value is True:
        return True, 5
    if value is False:
        return False, 5
    if isinstance(value, dict) and set(value) <= {"enabled", "top_k"}:
        enabled, top_k = value.get("enabled", True), value.get("top_k", 5)
        if (
            isinstance(enabled, bool)
            and isinstance(top_k, int)
            and not isinstance(top_k, bool)
            and 1 <= top_k <= MAX_TOP_K
        ):
            return enabled, top_k
    raise InvalidArgument(
        f'retrieval must be false, or {{"enabled": true|false, "top_k": 1-{MAX_TOP_K}}}',
        param="retrieval",
    )


def _citations_json(citations: list[Citation]) -> list[dict[str, Any]]:
    return [c.model_dump(mode="json") for c in citations]


def _with_citations(content: bytes, citations: list[Citation]) -> Response:
    try:
        payload = json.loads(content)
    except ValueError:
        return _relay_json(200, content)
    if isinstance(payload, dict):
        payload["citations"] = _citations_json(citations)
    return Response(json.dumps(payload).encode(), media_type="application/json")


def _event_with_citations(event: bytes, citations: list[Citation]) -> bytes:
    try:
        payload = json.loads(event.removeprefix(b"data: "))
    except ValueError:
        return event
    if not isinstance(payload, dict):
        return event
    payload["citations"] = _citations_json(citations)
    return b"data: " + json.dumps(payload).encode()


def _relay_json(status: int, content: bytes) -> Response:
    if status < 400:
        return Response(content, status_code=status, media_type="application/json")
    if status in (401, 403):
        # Our own upstream key was refused: an Auxen fault, not the caller's.
        return openai_error(
            502, "the instance refused the control plane's credentials", type_="api_error"
        )
    message, param, code = upstream_error(content)
    if message is not None:
        return openai_error(
            status,
            message,
            type_="invalid_request_error" if status < 500 else "api_error",
            param=param,
            code=code,
        )
    return openai_error(
        status,
        f"the instance's inference server answered HTTP {status}",
        type_="api_error" if status >= 500 else "invalid_request_error",
    )


def _unreachable(target: Target) -> JSONResponse:
    return openai_error(
        502,
        f"instance {target.instance_id} is not answering; check its state with "
        "GET /v1/instances/{id}",
        type_="api_error",
        code="upstream_unreachable",
    )
