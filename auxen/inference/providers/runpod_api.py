"""The raw RunPod REST API (v2) client: pods only, with Bearer auth, bounded retries and
errors mapped to what a caller can act on. `runpod.py` builds the provider on top.

Shapes follow RunPod's published v2 OpenAPI document ("Runpod REST API", version 2.0.0,
server https://api.runpod.io), as rendered at:
- https://docs.runpod.io/api-reference-v2/pods/create-a-pod  (POST /v2/pods: `name` and
  `image` required, exactly one of `gpu`/`cpu`; `args` (string), `disk` (GB), `ports`
  (["8000/http"]), `env` (object), `cloud`; answers 201 with the pod, which starts in
  PROVISIONING, then STARTING, then RUNNING once its container is healthy)
- https://docs.runpod.io/api-reference-v2/pods/get-a-pod  (GET /v2/pods/{id}: `id`,
  `name`, `status` in PROVISIONING | STARTING | RUNNING | EXITED | ERROR, plus the
  container settings; 403 when a valid key lacks access)
- https://docs.runpod.io/api-reference-v2/pods/list-pods  (GET /v2/pods: every pod of the
  key's user)
- https://docs.runpod.io/api-reference-v2/rate-limits  (429 with the IETF draft `RateLimit`
  / `RateLimit-Policy` headers: per window `r` remaining and `t` seconds to reset)
- the `gpu` object is `{id, count}` (GpuRequest in the docs.rs page of the `overbrainer`
  crate, which targets v2 and notes the API refuses unknown fields with 422); RunPod's
  own pod-deploy skill notes a create "places exactly the type you ask for, never falls
  back to another GPU, and answers 400 when that type cannot be placed".
Where the rendered pages were cut short (the list body's envelope, DELETE's status, the
error body), this client accepts both plausible forms: a list or `{"data"|"items"|
"pods": [...]}`; 200/202/204 for DELETE (404: already gone); RFC 9457 problem bodies
(`type`, `title`, `status`, `detail`) or a plain `{"error"|"message": ...}`.

The API key travels only in the Authorization header to `base_url`; it is never logged,
never part of an exception message, and not in `repr()` of anything here.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2

log = logging.getLogger(__name__)

_CAPACITY = re.compile(
    r"no (longer any )?instances? (are )?available|capacity|cannot be placed|out of stock"
    r"|not enough (free )?gpus|unavailable gpu",
    re.IGNORECASE,
)


class RunpodError(Exception):
    """A RunPod API call failed; `str()` is safe to show the user (never the key)."""

    def __init__(
        self, message: str, *, status: int | None = None, problem: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem or {}


class RunpodAuthError(RunpodError):
    """401/403: the provider key is wrong, revoked, or lacks the pod permissions."""


class RunpodCapacityError(RunpodError):
    """The requested GPU type cannot be placed right now (try another type)."""


class RunpodConflict(RunpodError):
    """409: the action is not allowed in the pod's current state."""


class RunpodRateLimited(RunpodError):
    """429 for longer than this client is willing to wait."""


class RunpodUnavailable(RunpodError):
    """5xx, timeouts or connection failures that outlasted the retries. `maybe_applied`
    is True when a non-idempotent request may have reached RunPod (look before retrying)."""

    def __init__(self, message: str, *, maybe_applied: bool, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.maybe_applied = maybe_applied


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_backoff_s: float = 0.5
    max_backoff_s: float = 60.0

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff for the retry after `attempt` (1-based)."""
        cap = min(self.max_backoff_s, self.base_backoff_s * 2 ** (attempt - 1))
        return random.uniform(0, cap)


class RunpodApi:
    """`GET/POST/DELETE /v2/pods` with retries: 429 waits as the server says (bounded),
    5xx and timeouts back off with jitter; a POST is retried only when it surely did not
    reach RunPod (connection refused, 429), otherwise `RunpodUnavailable(maybe_applied)`
    tells the caller to look for the pod before trying again."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._timeout_s = timeout_s
        self._http = httpx2.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=httpx2.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            follow_redirects=False,  # a redirect must never carry the key elsewhere
        )

    def __repr__(self) -> str:
        return f"RunpodApi({self.base_url!r})"

    def for_key(self, api_key: str) -> RunpodApi:
        """The same API, as another account (a workspace's own key)."""
        return RunpodApi(
            self.base_url, api_key, timeout_s=self._timeout_s, retry=self.retry, sleep=self._sleep
        )

    async def close(self) -> None:
        await self._http.aclose()

    # -- pods ----------------------------------------------------------------------

    async def create_pod(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = await self._request("POST", "/v2/pods", json=body, idempotent=False)
        return _object(reply)

    async def get_pod(self, pod_id: str) -> dict[str, Any] | None:
        """The pod, or None when RunPod does not know it (terminated, never existed)."""
        reply = await self._request("GET", f"/v2/pods/{_segment(pod_id)}", missing_ok=True)
        return None if reply is None else _object(reply)

    async def list_pods(self) -> list[dict[str, Any]]:
        reply = await self._request("GET", "/v2/pods")
        assert reply is not None
        payload = reply.json()
        if isinstance(payload, dict):
            for key in ("data", "items", "pods"):
                if isinstance(payload.get(key), list):
                    payload = payload[key]
                    break
        if not isinstance(payload, list):
            raise RunpodError("RunPod answered the pod list with an unexpected body")
        return [p for p in payload if isinstance(p, dict)]

    async def delete_pod(self, pod_id: str) -> None:
        """Terminate the pod and delete its disk. A pod already gone is success."""
        await self._request("DELETE", f"/v2/pods/{_segment(pod_id)}", missing_ok=True)

    # -- transport -----------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        idempotent: bool = True,
        missing_ok: bool = False,
    ) -> httpx2.Response | None:
        attempt = 0
        while True:
            attempt += 1
            last_try = attempt >= self.retry.max_attempts
            try:
                reply = await self._http.request(method, path, json=json)
            except httpx2.ConnectError as exc:  # never reached RunPod: always safe to retry
                if last_try:
                    raise RunpodUnavailable(
                        f"cannot reach the RunPod API ({type(exc).__name__})", maybe_applied=False
                    ) from None
                await self._pause(method, path, attempt, self.retry.backoff(attempt), "connect")
                continue
            except httpx2.TransportError as exc:  # timeouts, resets: it may have arrived
                if last_try or not idempotent:
                    raise RunpodUnavailable(
                        f"the RunPod API did not answer ({type(exc).__name__})",
                        maybe_applied=not idempotent,
                    ) from None
                await self._pause(method, path, attempt, self.retry.backoff(attempt), "timeout")
                continue
            status = reply.status_code
            if status < 300:
                return reply
            if status == 404 and missing_ok:
                return None
            if status == 429:
                wait = rate_limit_wait(reply.headers)
                if wait is None:
                    wait = self.retry.backoff(attempt)
                if last_try or wait > self.retry.max_backoff_s:
                    raise RunpodRateLimited(
                        f"RunPod is rate-limiting this deployment's API key; "
                        f"retry in {wait:.0f}s ({problem_message(reply)})",
                        status=429,
                        problem=_problem(reply),
                    )
                await self._pause(method, path, attempt, wait, "429")
                continue
            if status >= 500:
                if last_try or not idempotent:
                    raise RunpodUnavailable(
                        f"RunPod API error {status}: {problem_message(reply)}",
                        maybe_applied=not idempotent,
                        status=status,
                    )
                await self._pause(method, path, attempt, self.retry.backoff(attempt), str(status))
                continue
            raise classify(reply)

    async def back_off(self, attempt: int) -> None:
        """Wait the jittered backoff after failed attempt number `attempt`."""
        await self._sleep(self.retry.backoff(attempt))

    async def _pause(self, method: str, path: str, attempt: int, wait: float, why: str) -> None:
        log.info("RunPod %s %s: %s, retry %d in %.1fs", method, path, why, attempt, wait)
        await self._sleep(wait)


def classify(reply: httpx2.Response) -> RunpodError:
    """A 4xx (other than 429) as the error a caller can act on."""
    status = reply.status_code
    message = problem_message(reply)
    problem = _problem(reply)
    if status in (401, 403):
        return RunpodAuthError(
            f"RunPod refused the provider API key ({status}: {message}); "
            "check AUXEN_RUNPOD_API_KEY and its pod permissions",
            status=status,
            problem=problem,
        )
    if _CAPACITY.search(message) or "capacity" in str(problem.get("type", "")):
        return RunpodCapacityError(message, status=status, problem=problem)
    if status == 409:
        return RunpodConflict(
            f"RunPod refused the action in the pod's current state: {message}",
            status=status,
            problem=problem,
        )
    return RunpodError(f"RunPod API error {status}: {message}", status=status, problem=problem)


def problem_message(reply: httpx2.Response) -> str:
    """The human part of an RFC 9457 problem body (or of a plain JSON/text error)."""
    problem = _problem(reply)
    parts = [str(problem[k]) for k in ("title", "detail") if problem.get(k)]
    if not parts:
        for key in ("error", "message"):
            if isinstance(problem.get(key), str):
                parts.append(problem[key])
    if not parts:
        text = reply.text.strip()
        parts.append(text[:300] if text else reply.reason_phrase or "no details")
    message = ": ".join(dict.fromkeys(parts))  # title and detail are often the same
    return message[:1000]


def _problem(reply: httpx2.Response) -> dict[str, Any]:
    try:
        payload = reply.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


_PARAM = re.compile(r"\b(t|reset)\s*=\s*(\d+(?:\.\d+)?)")
_REMAINING = re.compile(r"\b(r|remaining)\s*=\s*(\d+)")


def rate_limit_wait(headers: httpx2.Headers) -> float | None:
    """Seconds to wait before the next request, from `Retry-After` (seconds or an HTTP
    date) or the IETF draft `RateLimit` field: the longest reset among the windows that
    have nothing left (`"minute";r=0;t=12, "day";r=90;t=3600` -> 12)."""
    retry_after = headers.get("retry-after")
    if retry_after:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            when = email.utils.parsedate_to_datetime(retry_after)
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    field = headers.get("ratelimit")
    if not field:
        return None
    waits: list[float] = []
    exhausted: list[float] = []
    for item in re.split(r",(?=\s*(?:\"|[a-z]+\s*=|$))", field):
        reset = _PARAM.search(item)
        if reset is None:
            continue
        waits.append(float(reset.group(2)))
        remaining = _REMAINING.search(item)
        if remaining is not None and int(remaining.group(2)) == 0:
            exhausted.append(float(reset.group(2)))
    if exhausted:
        return max(exhausted)
    return min(waits) if waits else None


def _object(reply: httpx2.Response | None) -> dict[str, Any]:
    assert reply is not None
    payload = reply.json()
    if not isinstance(payload, dict):
        raise RunpodError("RunPod answered with an unexpected body")
    return payload


def _segment(pod_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", pod_id):
        raise RunpodError(f"not a RunPod pod id: {pod_id[:40]!r}")
    return pod_id
