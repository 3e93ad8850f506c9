"""A local stand-in for RunPod: the REST API v2 pod endpoints (the shapes cited in
auxen/inference/providers/runpod_api.py) and the HTTPS proxy that reaches a pod's port.

It is the only stand-in in the tests, because no test can reach RunPod. Two real HTTP
servers on 127.0.0.1 run in a background thread: the API (`/v2/pods`, Bearer auth,
RFC 9457 problem bodies, RateLimit headers on 429, unknown create fields refused with 422)
and the proxy (`/{pod_id}/...`, the stand-in for `https://{pod_id}-8000.proxy.runpod.net`).
Each API key is an account that sees and deletes only its own pods (`add_account`), as a
workspace's own RunPod key (BYOK) would on RunPod.

Pods run a real vLLM CPU server with the tiny test model. vLLM takes a minute to start on
these machines, so pods asking for the same served model name share one vLLM process
(started on first use, kept for the stand-in's life); the proxy enforces each pod's own
`VLLM_API_KEY`, exactly as that pod's vLLM would, and forwards with the shared server's.

Faults a test can inject (attributes of `RunpodStandin`): `capacity_gpu_ids`, `rate_limit_next`
(429s with `RateLimit`), `errors_next` (5xx bursts), `timeouts_next` (the request is
applied, then the answer is held past the client's timeout), `create_delay_s`,
`delete_delay_s`, `provisioning_s` (slow start), `never_ready` (pods run but their port
never answers), and `vanish(pod_id)` (a pod disappears).

Pods of Auxen's pod image (`WATCHDOG_IMAGE`, deploy/runpod/Dockerfile) run its entrypoint
for real: `pod_watchdog.py` as the container's process, with the `RUNPOD_POD_ID` and
pod-scoped `RUNPOD_API_KEY` RunPod gives every pod (that key acts on its own pod only),
serving the pod's `8001/http` port through the proxy (`/{pod_id}-8001/...`, the stand-in
for `https://{pod_id}-8001.proxy.runpod.net`); its vLLM role is played by the shared
backend, so its own child only sleeps. `POST /v2/pods/{id}/action` takes `stop` (the pod
moves to EXITED and its container ends), `start` and `terminate`, and answers 409 when
the pod's status does not allow the action, as documented.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.servers import VLLM_PYTHON, free_port, vllm_env

WATCHDOG_IMAGE = "auxen/vllm-openai-watchdog:test"
POD_WATCHDOG = Path(__file__).resolve().parent.parent / "auxen/inference/providers/pod_watchdog.py"
ACTIONS = {
    "RUNNING": {"stop", "restart", "terminate"},
    "EXITED": {"start", "terminate"},
    "ERROR": {"start", "terminate"},
    "PROVISIONING": {"stop", "terminate"},
    "STARTING": {"stop", "terminate"},
}
CREATE_FIELDS = {
    "name", "image", "args", "disk", "ports", "env", "registry", "mounts", "cloud", "gpu",
    "cpu", "dataCenterIds", "startSsh", "cmd",
}  # fmt: skip
CAPACITY_DETAIL = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)


@dataclass
class Pod:
    id: str
    name: str
    body: dict[str, Any]
    created: float = field(default_factory=time.monotonic)
    status: str = "PROVISIONING"
    account: str = ""  # the API key of the RunPod account it runs in
    pod_key: str = field(default_factory=lambda: f"rpa_pod_{secrets.token_hex(8)}")
    container: subprocess.Popen[bytes] | None = None  # Auxen's pod image only
    watchdog_port: int | None = None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "image": self.body["image"],
            "args": self.body.get("args", ""),
            "disk": self.body.get("disk", 50),
            "ports": self.body.get("ports", []),
            "env": self.body.get("env", {}),
            "registry": None,
            "actions": sorted(ACTIONS.get(self.status, set())),
            "cloud": self.body.get("cloud", "SECURE"),
            "gpu": {**self.body["gpu"], "displayName": self.body["gpu"]["id"]},
        }

    @property
    def served_name(self) -> str:
        args = str(self.body.get("args", "")).split()
        return args[args.index("--served-model-name") + 1]


@dataclass
class Backend:
    """One vLLM CPU server shared by pods serving the same name."""

    port: int
    key: str
    proc: subprocess.Popen[bytes]
    ready: bool = False


class RunpodStandin:
    def __init__(self, model_dir: Path, log_dir: Path, *, api_key: str = "rpa_standin") -> None:
        self.model_dir = model_dir
        self.log_dir = log_dir
        self.api_key = api_key
        # RunPod accounts, by API key: each sees and deletes only its own pods. The
        # deployment's is `api_key`; a workspace's own (BYOK) is added with add_account.
        self.accounts: set[str] = {api_key}
        self.api_port = free_port()
        self.proxy_port = free_port()
        self.pods: dict[str, Pod] = {}
        self.deleted: list[str] = []
        self.actions: list[tuple[str, str, float]] = []  # (pod id, action, time) taken
        self.created: list[dict[str, Any]] = []  # every create body accepted
        self.requests: list[tuple[str, str]] = []
        self.proxy_auth_seen: set[str] = set()
        # (path, headers) of every request a pod was sent
        self.proxy_headers_seen: list[tuple[str, dict[str, str]]] = []
        self.backends: dict[str, Backend] = {}
        # Faults.
        self.capacity_gpu_ids: set[str] = set()
        self.rate_limit_next = 0
        self.rate_limit_reset_s = 1
        self.errors_next = 0
        self.timeouts_next = 0
        self.timeout_hold_s = 3.0
        self.create_delay_s = 0.0
        self.delete_delay_s = 0.0
        self.provisioning_s = 0.0
        self.never_ready = False
        self.start_backends = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[uvicorn.Server] = []
        self._thread: threading.Thread | None = None
        self._http: httpx2.AsyncClient | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def proxy_template(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}/{{pod_id}}"

    def env(self) -> dict[str, str]:
        """Settings that point an Auxen server at this stand-in."""
        return {
            "AUXEN_PROVIDER": "runpod",
            "AUXEN_RUNPOD_API_KEY": self.api_key,
            "AUXEN_RUNPOD_API_URL": self.api_url,
            "AUXEN_RUNPOD_PROXY_URL": self.proxy_template,
            "AUXEN_RUNPOD_REQUEST_TIMEOUT_S": "2",
            "AUXEN_RUNPOD_MAX_BACKOFF_S": "5",
        }

    def live_pods(self, prefix: str = "") -> list[Pod]:
        return [p for p in self.pods.values() if p.name.startswith(prefix)]

    def add_account(self, api_key: str) -> None:
        self.accounts.add(api_key)

    def vanish(self, pod_id: str) -> None:
        self.pods.pop(pod_id, None)

    # -- life ----------------------------------------------------------------------

    def start(self) -> RunpodStandin:
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._http = httpx2.AsyncClient(timeout=httpx2.Timeout(600.0, connect=5.0))
            api = Starlette(
                routes=[
                    Route("/v2/pods", self._pods, methods=["GET", "POST"]),
                    Route("/v2/pods/{pod_id}", self._pod, methods=["GET", "DELETE"]),
                    Route("/v2/pods/{pod_id}/action", self._action, methods=["POST"]),
                ]
            )
            proxy = Starlette(
                routes=[Route("/{pod_id}/{path:path}", self._proxy, methods=["GET", "POST", "PUT"])]
            )
            for app, port in ((api, self.api_port), (proxy, self.proxy_port)):
                config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
                self._servers.append(uvicorn.Server(config))

            async def main() -> None:
                tasks = [asyncio.create_task(s.serve()) for s in self._servers]
                tasks.append(asyncio.create_task(self._advance_pods()))
                while not all(s.started for s in self._servers):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                started.set()
                await asyncio.gather(*tasks[:-1])
                tasks[-1].cancel()

            loop.run_until_complete(main())

        self._thread = threading.Thread(target=run, name="runpod-standin", daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("the RunPod stand-in did not start")
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
        for pod in self.pods.values():
            self._end_container(pod)
        for backend in self.backends.values():
            backend.proc.terminate()
            try:
                backend.proc.wait(30)
            except subprocess.TimeoutExpired:
                backend.proc.kill()

    def wait_backends_ready(self, timeout: float = 400) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.backends and all(b.ready for b in self.backends.values()):
                return
            time.sleep(0.5)
        raise AssertionError("the stand-in's vLLM servers never became ready")

    # -- pods advancing through PROVISIONING -> STARTING -> RUNNING ----------------

    async def _advance_pods(self) -> None:
        while True:
            for pod in list(self.pods.values()):
                age = time.monotonic() - pod.created
                if pod.status == "PROVISIONING" and age >= self.provisioning_s:
                    pod.status = "STARTING"
                elif pod.status == "STARTING":
                    if self.start_backends and not self.never_ready:
                        self._backend_for(pod.served_name)
                    self._start_container(pod)
                    pod.status = "RUNNING"
            for backend in self.backends.values():
                if not backend.ready and backend.proc.poll() is None:
                    try:
                        reply = await self._client.get(
                            f"http://127.0.0.1:{backend.port}/health", timeout=1.0
                        )
                        backend.ready = reply.status_code == 200
                    except httpx2.HTTPError:
                        pass
            await asyncio.sleep(0.2)

    @property
    def _client(self) -> httpx2.AsyncClient:
        assert self._http is not None
        return self._http

    def _backend_for(self, served_name: str) -> Backend:
        backend = self.backends.get(served_name)
        if backend is None:
            port, key = free_port(), secrets.token_urlsafe(16)
            env = {k: v for k, v in os.environ.items() if not k.startswith("AUXEN_")}
            settings = vllm_env()
            env.update(
                HF_HUB_OFFLINE="1",
                VLLM_NO_USAGE_STATS="1",
                VLLM_CPU_KVCACHE_SPACE=settings["AUXEN_VLLM_CPU_KVCACHE_GIB"],
                VLLM_API_KEY=key,
            )
            log = (self.log_dir / f"vllm-{port}.log").open("ab")
            argv = [
                str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(self.model_dir), "--served-model-name", served_name,
                "--host", "127.0.0.1", "--port", str(port),
                "--max-model-len", settings["AUXEN_VLLM_MAX_MODEL_LEN"],
                "--dtype", settings["AUXEN_VLLM_DTYPE"],
            ]  # fmt: skip
            proc = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            backend = self.backends[served_name] = Backend(port, key, proc)
        return backend

    def _start_container(self, pod: Pod) -> None:
        """Auxen's pod image runs its entrypoint, the watchdog, with what RunPod puts in
        every pod's environment."""
        if pod.body["image"] != WATCHDOG_IMAGE or pod.container is not None:
            return
        pod.watchdog_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUXEN_")}
        env.update(pod.body.get("env", {}))
        env.update(
            RUNPOD_POD_ID=pod.id,
            RUNPOD_API_KEY=pod.pod_key,
            AUXEN_WATCHDOG_PORT=str(pod.watchdog_port),
        )
        log = (self.log_dir / f"pod-{pod.id}.log").open("ab")
        sleeper = "import time\nwhile True: time.sleep(3600)"
        pod.container = subprocess.Popen(
            [sys.executable, str(POD_WATCHDOG), sys.executable, "-c", sleeper],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _end_container(self, pod: Pod) -> None:
        """Stop the container: every process in it (they carry its RUNPOD_POD_ID), in
        whatever process group they put themselves."""
        if pod.container is None:
            return
        marker = f"RUNPOD_POD_ID={pod.id}".encode()
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if marker in environ.read_bytes().split(b"\0"):
                    os.kill(int(environ.parent.name), signal.SIGKILL)
            except (OSError, ValueError):
                continue
        pod.container.wait()
        pod.container = None

    def pod_log(self, pod_id: str) -> str:
        path = self.log_dir / f"pod-{pod_id}.log"
        return path.read_text() if path.exists() else ""

    # -- API -----------------------------------------------------------------------

    async def _faults(self, request: Request) -> Response | None:
        self.requests.append((request.method, request.url.path))
        if _account(request) not in self.accounts:
            return problem(401, "Unauthorized", "missing or invalid API key")
        if self.rate_limit_next > 0:
            self.rate_limit_next -= 1
            return problem(
                429,
                "Too Many Requests",
                "rate limit exceeded for window minute",
                headers={
                    "RateLimit-Policy": '"minute";q=60;w=60, "day";q=10000;w=86400',
                    "RateLimit": f'"minute";r=0;t={self.rate_limit_reset_s}, "day";r=9000;t=40000',
                },
            )
        if self.errors_next > 0:
            self.errors_next -= 1
            return problem(503, "Service Unavailable", "upstream scheduler unavailable")
        return None

    async def _hold_if_timing_out(self) -> None:
        if self.timeouts_next > 0:
            self.timeouts_next -= 1
            await asyncio.sleep(self.timeout_hold_s)

    async def _pods(self, request: Request) -> Response:
        refused = await self._faults(request)
        if refused is not None:
            return refused
        if request.method == "GET":
            await self._hold_if_timing_out()
            account = _account(request)
            return JSONResponse([p.view() for p in self.pods.values() if p.account == account])
        body = await request.json()
        unknown = set(body) - CREATE_FIELDS
        if unknown:
            return problem(422, "Unprocessable Entity", f"unknown fields: {sorted(unknown)}")
        if not body.get("name") or not body.get("image"):
            return problem(400, "Bad Request", "name and image are required")
        if ("gpu" in body) == ("cpu" in body):
            return problem(400, "Bad Request", "exactly one of gpu or cpu must be set")
        ports = body.get("ports", [])
        if not all(re.fullmatch(r"\d+/(http|tcp)", p) for p in ports):
            return problem(400, "Bad Request", "ports must look like 8000/http")
        gpu = body["gpu"]
        if not isinstance(gpu, dict) or set(gpu) - {"id", "count"} or not gpu.get("id"):
            return problem(400, "Bad Request", "gpu must be {id, count}")
        if gpu["id"] in self.capacity_gpu_ids:
            return problem(400, "Bad Request", CAPACITY_DETAIL)
        pod = Pod(id=secrets.token_hex(7), name=body["name"], body=body, account=_account(request))
        self.pods[pod.id] = pod
        self.created.append(body)
        await self._hold_if_timing_out()
        if self.create_delay_s:
            await asyncio.sleep(self.create_delay_s)
        return JSONResponse(pod.view(), status_code=201)

    async def _pod(self, request: Request) -> Response:
        refused = await self._faults(request)
        if refused is not None:
            return refused
        pod_id = request.path_params["pod_id"]
        pod = self.pods.get(pod_id)
        if pod is None or pod.account != _account(request):  # another account's: unseen
            return problem(404, "Not Found", f"pod {pod_id} not found")
        if request.method == "GET":
            await self._hold_if_timing_out()
            return JSONResponse(pod.view())
        if self.delete_delay_s:
            await asyncio.sleep(self.delete_delay_s)
        self.pods.pop(pod_id, None)
        self._end_container(pod)
        self.deleted.append(pod_id)
        await self._hold_if_timing_out()
        return Response(status_code=204)

    async def _action(self, request: Request) -> Response:
        pod_id = request.path_params["pod_id"]
        pod = self.pods.get(pod_id)
        own_key = pod is not None and _account(request) == pod.pod_key
        if not own_key:  # a pod's own key acts on that pod; account keys as for _pod
            refused = await self._faults(request)
            if refused is not None:
                return refused
        else:
            self.requests.append((request.method, request.url.path))
        if pod is None or not (own_key or pod.account == _account(request)):
            return problem(404, "Not Found", f"pod {pod_id} not found")
        body = await request.json()
        action = body.get("action") if isinstance(body, dict) else None
        if action not in ACTIONS.get(pod.status, set()):
            return problem(409, "Conflict", f"action {action!r} is not valid for {pod.status}")
        self.actions.append((pod_id, str(action), time.time()))
        if action == "terminate":
            self.pods.pop(pod_id, None)
            self._end_container(pod)
            self.deleted.append(pod_id)
            return Response(status_code=204)
        if action == "stop":
            pod.status = "EXITED"
            # The container is stopped, as RunPod stops it: after this answer reaches the
            # process that asked (it may be the container itself).
            return JSONResponse(pod.view(), background=BackgroundTask(self._end_container, pod))
        pod.status = "RUNNING"
        return JSONResponse(pod.view())

    # -- proxy ---------------------------------------------------------------------

    async def _proxy(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        self.proxy_auth_seen.add(auth)
        self.proxy_headers_seen.append((request.path_params["path"], dict(request.headers)))
        target = request.path_params["pod_id"]
        if target.endswith("-8001"):
            return await self._proxy_watchdog(request, target.removesuffix("-8001"))
        pod = self.pods.get(target)
        if pod is None or pod.status != "RUNNING":
            return Response("pod not found or not running", status_code=404)
        backend = self.backends.get(pod.served_name)
        if backend is None or not backend.ready or self.never_ready:
            return Response("Bad Gateway", status_code=502)
        path = request.path_params["path"]
        if path.startswith("v1/") and auth != f"Bearer {pod.body['env'].get('VLLM_API_KEY')}":
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        upstream = await self._client.send(
            self._client.build_request(
                request.method,
                f"http://127.0.0.1:{backend.port}/{path}",
                headers={
                    "Authorization": f"Bearer {backend.key}",
                    "Content-Type": request.headers.get("content-type", "application/json"),
                },
                content=await request.body(),
            ),
            stream=True,
        )
        return StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type"),
            background=BackgroundTask(upstream.aclose),
        )

    async def _proxy_watchdog(self, request: Request, pod_id: str) -> Response:
        """A pod's port 8001: its watchdog, when it runs Auxen's image."""
        pod = self.pods.get(pod_id)
        if pod is None or pod.status != "RUNNING" or pod.watchdog_port is None:
            return Response("pod not found or not running", status_code=404)
        headers = {
            k: v for k, v in request.headers.items() if k in ("authorization", "content-type")
        }
        try:
            reply = await self._client.request(
                request.method,
                f"http://127.0.0.1:{pod.watchdog_port}/{request.path_params['path']}",
                headers=headers,
                content=await request.body(),
                timeout=5.0,
            )
        except httpx2.HTTPError:
            return Response("Bad Gateway", status_code=502)
        return Response(reply.content, status_code=reply.status_code)


def _account(request: Request) -> str:
    return request.headers.get("authorization", "").removeprefix("Bearer ")


def problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An RFC 9457 problem body."""
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        headers=headers,
        media_type="application/problem+json",
    )
