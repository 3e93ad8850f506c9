"""The watchdog inside a RunPod pod: the entrypoint of Auxen's pod image
(`deploy/runpod/Dockerfile`), it starts the vLLM server given on its command line and
stops the pod through RunPod's API once the instance's paid window has ended without
the control plane extending it, whether or not any control plane is running.

RunPod gives every pod its own id and a key scoped to that pod (`RUNPOD_POD_ID`,
`RUNPOD_API_KEY`), and documents stopping a pod from inside it
(`POST /v2/pods/{id}/action` with `{"action": "stop"}`: compute is released, the pod
moves to EXITED; the control plane deletes it when it next looks). Until the API has
taken the stop, the server is ended too, so no GPU work goes on unpaid.

Environment: `AUXEN_PAID_UNTIL` (seconds since the epoch: the first window),
`AUXEN_WATCHDOG_TOKEN` (what the control plane proves itself with), `AUXEN_RUNPOD_API_URL`
(default https://api.runpod.io), `AUXEN_WATCHDOG_PORT` (default 8001, exposed as
`8001/http`). The control plane moves the deadline with `PUT /paid-until`
(`{"paid_until": <seconds>}`, Bearer token); `GET /paid-until` reads it.

    python3 pod_watchdog.py vllm serve --model ... --port 8000

Standard library only: it runs in the vLLM image's Python, beside nothing of Auxen's.
"""

from __future__ import annotations

import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHECK_S = 0.5
RETRY_STOP_S = 5.0
STOP_GRACE_S = 15.0


class Deadline:
    def __init__(self, until: float | None) -> None:
        self.until = until
        self.lock = threading.Lock()

    def get(self) -> float | None:
        with self.lock:
            return self.until

    def set(self, until: float) -> None:
        with self.lock:
            self.until = until


def serve_deadline(deadline: Deadline, token: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _authorised(self) -> bool:
            given = self.headers.get("Authorization", "")
            return bool(token) and hmac.compare_digest(given, f"Bearer {token}")

        def _answer(self, status: int, body: dict[str, Any] | None = None) -> None:
            raw = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            if self.path != "/paid-until" or not self._authorised():
                self._answer(404 if self.path != "/paid-until" else 401)
                return
            self._answer(200, {"paid_until": deadline.get()})

        def do_PUT(self) -> None:
            if self.path != "/paid-until":
                self._answer(404)
                return
            if not self._authorised():
                self._answer(401)
                return
            try:
                length = min(int(self.headers.get("Content-Length", "0")), 1024)
                until = float(json.loads(self.rfile.read(length))["paid_until"])
            except (ValueError, KeyError, TypeError):
                self._answer(400, {"error": "paid_until: a number of seconds"})
                return
            deadline.set(until)
            self._answer(200, {"paid_until": until})

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: the pod's log is vLLM's

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop_pod(api_url: str, pod_id: str, key: str) -> bool:
    request = urllib.request.Request(
        f"{api_url.rstrip('/')}/v2/pods/{pod_id}/action",
        data=json.dumps({"action": "stop"}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            status: int = reply.status
            return 200 <= status < 300
    except OSError as exc:
        print(f"auxen watchdog: stopping the pod failed ({exc}); retrying", flush=True)
        return False


def end_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def main(argv: list[str]) -> int:
    env = os.environ
    raw = env.get("AUXEN_PAID_UNTIL")
    deadline = Deadline(float(raw) if raw else None)
    serve_deadline(
        deadline, env.get("AUXEN_WATCHDOG_TOKEN", ""), int(env.get("AUXEN_WATCHDOG_PORT", "8001"))
    )
    server = subprocess.Popen(argv, start_new_session=True)  # its own group: ended whole
    signal.signal(signal.SIGTERM, lambda *_: end_server(server))
    while server.poll() is None:
        until = deadline.get()
        if until is not None and time.time() >= until:
            print(
                f"auxen watchdog: the paid window ended at {until:.0f} and was not "
                "extended; stopping the pod",
                flush=True,
            )
            end_server(server)
            api = env.get("AUXEN_RUNPOD_API_URL", "https://api.runpod.io")
            while not stop_pod(api, env["RUNPOD_POD_ID"], env["RUNPOD_API_KEY"]):
                time.sleep(RETRY_STOP_S)
            return 0
        time.sleep(CHECK_S)
    return server.returncode if server.returncode >= 0 else 128 - server.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
