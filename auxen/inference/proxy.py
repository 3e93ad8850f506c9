"""The OpenAI-compatible proxy in front of each instance's vLLM server.

`/v1/instances/{id}/chat/completions`, `/completions` and `/models` are forwarded to the
instance's upstream with the upstream key (which never leaves the control plane). SSE
streams are relayed event by event as they arrive. Upstream is always asked for
`stream_options.include_usage`; that extra usage chunk is stripped unless the caller
asked for it. Each call leaves a UsageRecord with counts and timings, never text; the
request and response bodies are never logged.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from auxen.auth.sealing import unseal
from auxen.httputil import bearer, openai_error, read_json_body
from auxen.inference.upstream import UpstreamError, UpstreamPool, UpstreamResponse
from auxen.runtime import Runtime
from auxen.store.models import Instance, InstanceState, KeyKind
from auxen.tools.context import Caller
from auxen.tools.errors import Conflict, InvalidArgument, NotFound, PermissionDenied

log = logging.getLogger(__name__)

TARGET_TTL_S = 5.0
# A delta or completion chunk carrying text; and a chunk carrying a usage object.
_NON_EMPTY_TEXT = re.compile(rb'"(?:content|text)":\s*"(?!")')
_USAGE_OBJECT = re.compile(rb'"usage":\s*\{')


@dataclass(frozen=True)
class Target:
    instance_id: str
    workspace_id: str
    livemode: bool
    model: str
    state: InstanceState
    base_url: str | None
    api_key: str | None


class InferenceProxy:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._targets: dict[str, tuple[Target, float]] = {}
        self.upstream = UpstreamPool()

    def forget(self, instance_id: str) -> None:
        cached = self._targets.pop(instance_id, None)
        if cached is not None and cached[0].base_url is not None:
            self.upstream.forget_origin(cached[0].base_url)

    async def close(self) -> None:
        await self.upstream.close()

    # -- resolving the caller's instance --------------------------------------------

    async def _target(self, instance_id: str) -> Target | None:
        now = time.monotonic()
        cached = self._targets.get(instance_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self.rt.db.system() as session:
            instance = await session.get(Instance, instance_id)
        if instance is None:
            return None
        target = Target(
            instance_id=instance.id,
            workspace_id=instance.workspace_id,
            livemode=instance.livemode,
            model=instance.model,
            state=instance.state,
            base_url=instance.upstream_url,
            api_key=unseal(
                self.rt.settings.master_key_bytes,
                instance.workspace_id,
                instance.upstream_key_sealed,
            )
            if instance.upstream_key_sealed
            else None,
        )
        self._targets[instance_id] = (target, now + TARGET_TTL_S)
        return target

    async def authorize(self, request: Request) -> tuple[Caller, Target]:
        instance_id = request.path_params["instance_id"]
        caller = await self.rt.auth.authenticate(bearer(request))
        if caller.key_kind is KeyKind.INSTANCE and caller.instance_id != instance_id:
            raise PermissionDenied(
                "this instance key belongs to another instance; use that instance's auxk_ key",
            )
        target = await self._target(instance_id)
        if (
            target is None
            or target.workspace_id != caller.workspace_id
            or target.livemode != caller.livemode
        ):
            raise NotFound(f"no instance {instance_id}", param="instance_id")
        if target.state is not InstanceState.READY or target.base_url is None:
            raise Conflict(
                f"instance {instance_id} is {target.state.value}, not ready; "
                + (
                    "wait until its state is ready"
                    if not target.state.is_terminal and target.state is not InstanceState.STOPPING
                    else "provision a new instance"
                ),
                param="instance_id",
            )
        return caller, target

    # -- endpoints -------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        _, target = await self.authorize(request)
        try:
            upstream = await self.upstream.request(
                "GET", f"{target.base_url}/v1/models", _upstream_headers(target)
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
        body = await read_json_body(request, self.rt.settings.max_body_bytes)
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
        meter = _Meter(self.rt, caller, target, path, stream, started)
        try:
            upstream = await self.upstream.request(
                "POST",
                f"{target.base_url}/v1/{path}",
                {**_upstream_headers(target), "Content-Type": "application/json"},
                json.dumps(body).encode(),
            )
        except UpstreamError:
            meter.finish(502, "upstream_unreachable")
            return _unreachable(target)
        if upstream.status >= 400 or not stream:
            try:
                content = await upstream.read()
            except UpstreamError:
                meter.finish(502, "upstream_error")
                return _unreachable(target)
            finally:
                upstream.close()
            response = _relay_json(upstream.status, content)
            if upstream.status < 400:
                meter.take_usage(_usage_of(content))
            meter.finish(response.status_code, "ok" if upstream.status < 400 else "error")
            return response
        return StreamingResponse(
            self._relay_stream(upstream, meter, wants_usage),
            status_code=upstream.status,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _relay_stream(
        self, upstream: UpstreamResponse, meter: _Meter, wants_usage: bool
    ) -> AsyncIterator[bytes]:
        outcome = "client_closed"
        pending = b""
        try:
            async for chunk in upstream.iter_chunks():
                pending += chunk
                events = pending.split(b"\n\n")
                pending = events.pop()
                out = []
                for event in events:
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


class _Meter:
    """Counts one call's tokens and timings and records them as a UsageRecord."""

    def __init__(
        self, rt: Runtime, caller: Caller, target: Target, path: str, stream: bool, started: float
    ) -> None:
        self.rt = rt
        self.caller = caller
        self.target = target
        self.endpoint = path
        self.stream = stream
        self.started = started
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.content_chunks = 0
        self.ttft_ms: float | None = None
        self.saw_usage = False
        self.done = False

    def take_usage(self, usage: dict[str, Any] | None) -> None:
        if usage:
            self.saw_usage = True
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)

    def observe_event(self, event: bytes) -> bool:
        """Note what an SSE event carries; False if it is the usage-only chunk that
        Auxen asked for on the caller's behalf. Byte checks first: most events are
        token deltas, and parsing each one's JSON would dominate the relay's cost."""
        if _NON_EMPTY_TEXT.search(event):
            self.content_chunks += 1
            if self.ttft_ms is None:
                self.ttft_ms = (time.perf_counter() - self.started) * 1000
        if not _USAGE_OBJECT.search(event):
            return True
        try:
            payload = json.loads(event.removeprefix(b"data: "))
        except ValueError:
            return True
        usage = payload.get("usage") if isinstance(payload, dict) else None
        if not usage:
            return True
        self.take_usage(usage)
        return bool(payload.get("choices"))

    def finish(self, status_code: int, outcome: str) -> None:
        if self.done:
            return
        self.done = True
        completion = self.completion_tokens if self.saw_usage else self.content_chunks
        self.rt.usage.record(
            workspace_id=self.target.workspace_id,
            instance_id=self.target.instance_id,
            api_key_id=self.caller.key_id,
            endpoint=self.endpoint,
            model=self.target.model,
            stream=self.stream,
            status_code=status_code,
            outcome=outcome,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            latency_ms=(time.perf_counter() - self.started) * 1000,
            ttft_ms=self.ttft_ms,
        )


def _upstream_headers(target: Target) -> dict[str, str]:
    # Only the upstream key: the caller's own Authorization and cookies never go upstream.
    return {"Authorization": f"Bearer {target.api_key}"}


def _usage_of(content: bytes) -> dict[str, Any] | None:
    try:
        usage = json.loads(content).get("usage")
    except (ValueError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


def _relay_json(status: int, content: bytes) -> Response:
    if status < 400:
        return Response(content, status_code=status, media_type="application/json")
    if status in (401, 403):
        # Our own upstream key was refused: an Auxen fault, not the caller's.
        return openai_error(
            502, "the instance refused the control plane's credentials", type_="api_error"
        )
    try:
        payload = json.loads(content)
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and "message" in error:
        param = error.get("param")
        return openai_error(
            status,
            str(error["message"]),
            type_="invalid_request_error" if status < 500 else "api_error",
            param=param.removeprefix("body.") if isinstance(param, str) else None,
            code=str(error.get("code")) if error.get("code") is not None else None,
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
