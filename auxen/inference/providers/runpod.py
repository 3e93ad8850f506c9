"""The `runpod` provider: one RunPod GPU pod per instance, running the vLLM OpenAI image.

What it sends (through `runpod_api.RunpodApi`, whose docstring cites the RunPod v2 API
documents it follows): `POST /v2/pods` with the image, `gpu {id, count: 1}`, the disk,
`ports: ["8000/http"]`, `env`, `args` and `cloud`. The vLLM server gets the model,
`--served-model-name` and port 8000 in `args`; its per-instance random API key travels in
`VLLM_API_KEY` (vLLM's own equivalent of `--api-key`), so it is not part of the start
command RunPod shows in its console and logs. A Hugging Face token for gated models goes
in `HF_TOKEN`: the launch's own (a workspace's BYOK token) or the deployment's.

Idempotent provisioning: a pod is named `<prefix>-<instance id>`, so the instance id is
the idempotency key. `create` first looks for a pod with that name (an earlier attempt
that timed out, or a control plane that crashed after asking) and adopts it; after an
ambiguous failure (timeout, 5xx) it looks again before asking a second time. `list_owned`
returns every pod with this deployment's prefix, so the reconciler can terminate pods no
live instance owns, and a second pod of one instance.

The instance is reached through RunPod's HTTPS proxy, `https://{pod_id}-8000.proxy.
runpod.net` (AUXEN_RUNPOD_PROXY_URL, so tests can point it at a stand-in).

Capacity errors move on to the next GPU type of the launch's fallback list; 401/403, 409
and other refusals become a ProviderError with RunPod's problem `title`/`detail`. The API
key is only ever in the Authorization header to AUXEN_RUNPOD_API_URL.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import shlex
from datetime import datetime
from typing import Any

import httpx2

from auxen.config import ConfigError, Settings
from auxen.inference.providers.base import (
    PROVIDER_ACCOUNT,
    LaunchSpec,
    OwnedResource,
    ProviderError,
    Resource,
    ResourceStatus,
)
from auxen.inference.providers.runpod_api import (
    RetryPolicy,
    RunpodApi,
    RunpodCapacityError,
    RunpodError,
    RunpodUnavailable,
)

log = logging.getLogger(__name__)

# Auxen's GPU type ids (auxen.billing.catalog) -> RunPod's GPU type ids.
RUNPOD_GPU_IDS: dict[str, str] = {
    "L4": "NVIDIA L4",
    "A100-80GB": "NVIDIA A100 80GB PCIe",
    "H100-80GB": "NVIDIA H100 80GB HBM3",
}
_ALIVE = {"PROVISIONING", "STARTING", "RUNNING", "CREATED", "RESTARTING"}
VLLM_PORT = 8000
WATCHDOG_PORT = 8001


class RunpodProvider:
    name = "runpod"
    accounts_per_workspace = True  # a workspace's own RunPod key runs its pods there

    def __init__(self, settings: Settings, api: RunpodApi | None = None) -> None:
        if api is None:
            if settings.runpod_api_key is None:
                raise ConfigError("AUXEN_PROVIDER=runpod needs AUXEN_RUNPOD_API_KEY")
            api = RunpodApi(
                settings.runpod_api_url,
                settings.runpod_api_key.get_secret_value(),
                timeout_s=settings.runpod_request_timeout_s,
                retry=RetryPolicy(
                    max_attempts=settings.runpod_max_attempts,
                    max_backoff_s=settings.runpod_max_backoff_s,
                ),
            )
        self.api = api
        self.settings = settings
        self.ready_timeout_s = settings.runpod_ready_timeout_s
        self.prefix = f"{settings.runpod_pod_prefix}-"
        self._accounts: dict[bytes, RunpodApi] = {}  # sha256 of a workspace's key -> client
        self._last_seen: dict[str, str] = {}  # pod id -> last status, for progress lines
        self._watchdog_http = httpx2.AsyncClient(
            timeout=httpx2.Timeout(settings.runpod_request_timeout_s, connect=5.0),
            follow_redirects=False,
        )

    async def close(self) -> None:
        await self._watchdog_http.aclose()
        await self.api.close()
        for api in self._accounts.values():
            await api.close()

    def _api(self) -> RunpodApi:
        """The API client of the account the current call acts in (PROVIDER_ACCOUNT):
        a workspace's own RunPod key, or the deployment's."""
        key = PROVIDER_ACCOUNT.get()
        if key is None:
            return self.api
        digest = hashlib.sha256(key.encode()).digest()
        api = self._accounts.get(digest)
        if api is None:
            api = self._accounts[digest] = self.api.for_key(key)
        return api

    def pod_name(self, instance_id: str) -> str:
        return f"{self.prefix}{instance_id}"

    def endpoint(self, pod_id: str) -> str:
        return self.settings.runpod_proxy_url.format(pod_id=pod_id).rstrip("/")

    # -- create --------------------------------------------------------------------

    async def create(self, spec: LaunchSpec) -> Resource:
        existing = await self._find(spec.instance_id)
        if existing is not None:
            log.info("adopting pod %s already created for %s", existing["id"], spec.instance_id)
            return self._resource(existing, spec)
        refusals: list[str] = []
        for gpu_type in spec.gpu_candidates:
            gpu_id = RUNPOD_GPU_IDS.get(gpu_type)
            if gpu_id is None:
                refusals.append(f"{gpu_type}: not a RunPod GPU type")
                continue
            try:
                pod = await self._create_once(spec, gpu_type, gpu_id)
            except RunpodCapacityError as exc:
                log.info("no %s capacity for %s: %s", gpu_type, spec.instance_id, exc)
                refusals.append(f"{gpu_type}: {exc}")
                continue
            except RunpodError as exc:
                raise ProviderError(str(exc)) from None
            return self._resource(pod, spec, gpu_type)
        raise ProviderError(
            "RunPod has no capacity for any requested GPU type (" + "; ".join(refusals) + "); "
            "try again later or add gpu_fallbacks"
        )

    async def _create_once(self, spec: LaunchSpec, gpu_type: str, gpu_id: str) -> dict[str, Any]:
        """POST the pod; after an answer that may hide a created pod, look before asking
        again, so one instance never gets two pods."""
        attempts = self._api().retry.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return await self._api().create_pod(self._pod_body(spec, gpu_id))
            except RunpodUnavailable as exc:
                if exc.maybe_applied:
                    found = await self._find(spec.instance_id)
                    if found is not None:
                        return found
                if attempt == attempts:
                    raise
                log.info("creating the pod of %s: %s; trying again", spec.instance_id, exc)
                await self._api().back_off(attempt)
        raise AssertionError("unreachable")

    def _pod_body(self, spec: LaunchSpec, gpu_id: str) -> dict[str, Any]:
        args = [
            "--model", spec.model,
            "--served-model-name", spec.served_model_name,
            "--host", "0.0.0.0",
            "--port", str(VLLM_PORT),
        ]  # fmt: skip
        env = {
            "VLLM_API_KEY": spec.upstream_api_key,
            "AUXEN_INSTANCE_ID": spec.instance_id,
            "VLLM_NO_USAGE_STATS": "1",
        }
        hf_token = spec.hf_token or (
            self.settings.hf_token.get_secret_value() if self.settings.hf_token else None
        )
        if hf_token:
            env["HF_TOKEN"] = hf_token
        ports = [f"{VLLM_PORT}/http"]
        if self.settings.runpod_watchdog:  # the image's entrypoint is `pod_watchdog`
            ports.append(f"{WATCHDOG_PORT}/http")
            env["AUXEN_WATCHDOG_TOKEN"] = self.watchdog_token(spec.instance_id)
            env["AUXEN_RUNPOD_API_URL"] = self.settings.runpod_api_url
            if spec.paid_until is not None:
                env["AUXEN_PAID_UNTIL"] = f"{spec.paid_until.timestamp():.3f}"
        return {
            "name": self.pod_name(spec.instance_id),
            "image": self.settings.runpod_image,
            "cloud": self.settings.runpod_cloud,
            "gpu": {"id": gpu_id, "count": 1},
            "disk": self.settings.runpod_disk_gb,
            "ports": ports,
            "env": env,
            "args": shlex.join(args),
        }

    def _resource(
        self, pod: dict[str, Any], spec: LaunchSpec, gpu_type: str | None = None
    ) -> Resource:
        pod_id = str(pod["id"])
        self._last_seen[pod_id] = str(pod.get("status") or "PROVISIONING")
        if gpu_type is None:  # adopted: which of the candidates did it get?
            got = (pod.get("gpu") or {}).get("id") if isinstance(pod.get("gpu"), dict) else None
            by_id = {v: k for k, v in RUNPOD_GPU_IDS.items()}
            gpu_type = by_id.get(str(got), spec.gpu_type)
        return Resource(provider_id=pod_id, endpoint=self.endpoint(pod_id), gpu_type=gpu_type)

    async def _find(self, instance_id: str) -> dict[str, Any] | None:
        """The live pod named for this instance (the oldest, if several)."""
        pods = await self._pods_named(self.pod_name(instance_id))
        alive = [p for p in pods if str(p.get("status", "")).upper() in _ALIVE]
        return alive[0] if alive else None

    async def _pods_named(self, name: str) -> list[dict[str, Any]]:
        try:
            pods = await self._api().list_pods()
        except RunpodError as exc:
            raise ProviderError(f"cannot list RunPod pods: {exc}") from None
        return [p for p in pods if p.get("name") == name and p.get("id")]

    # -- observe -------------------------------------------------------------------

    async def status(self, provider_id: str) -> ResourceStatus:
        try:
            pod = await self._api().get_pod(provider_id)
        except RunpodError as exc:
            raise ProviderError(f"cannot read pod {provider_id}: {exc}") from None
        if pod is None:
            self._last_seen[provider_id] = "GONE"
            return ResourceStatus.GONE
        status = str(pod.get("status") or "").upper()
        self._last_seen[provider_id] = status
        return ResourceStatus.RUNNING if status in _ALIVE else ResourceStatus.EXITED

    async def describe(self, provider_id: str) -> str:
        status = self._last_seen.get(provider_id, "unknown")
        stage = {
            "PROVISIONING": "waiting for a GPU machine",
            "STARTING": "pulling the image and starting vLLM",
            "RUNNING": "container running; loading the model",
        }.get(status, status.lower())
        return f"RunPod pod {provider_id}: {status} ({stage})"

    async def list_owned(self) -> list[OwnedResource]:
        try:
            pods = await self._api().list_pods()
        except RunpodError as exc:
            raise ProviderError(f"cannot list RunPod pods: {exc}") from None
        owned = []
        for pod in pods:
            name = str(pod.get("name") or "")
            if name.startswith(self.prefix) and pod.get("id"):
                owned.append(
                    OwnedResource(
                        instance_id=name[len(self.prefix) :],
                        provider_id=str(pod["id"]),
                        endpoint=self.endpoint(str(pod["id"])),
                        # A stopped pod (its watchdog stopped it, or it crashed) only
                        # ever needs deleting.
                        running=str(pod.get("status") or "").upper() in _ALIVE,
                    )
                )
        return owned

    async def keep_until(self, provider_id: str, instance_id: str, paid_until: datetime) -> None:
        """Move the deadline of the pod's own watchdog (`pod_watchdog`, the entrypoint
        of Auxen's pod image), reached on the pod's watchdog port through RunPod's proxy."""
        if not self.settings.runpod_watchdog or not provider_id:
            return
        url = self.settings.runpod_watchdog_url.format(pod_id=provider_id).rstrip("/")
        try:
            reply = await self._watchdog_http.put(
                f"{url}/paid-until",
                json={"paid_until": paid_until.timestamp()},
                headers={"Authorization": f"Bearer {self.watchdog_token(instance_id)}"},
            )
        except httpx2.HTTPError as exc:
            raise ProviderError(f"cannot reach the watchdog of pod {provider_id}: {exc}") from None
        if reply.status_code != 200:
            raise ProviderError(
                f"the watchdog of pod {provider_id} answered HTTP {reply.status_code}"
            )

    def watchdog_token(self, instance_id: str) -> str:
        """What the control plane proves itself with to one pod's watchdog: derived from
        the master key, so it survives restarts and differs per instance."""
        key = self.settings.master_key_bytes
        return hmac.new(key, f"pod-watchdog:{instance_id}".encode(), "sha256").hexdigest()

    async def logs_tail(self, provider_id: str, instance_id: str, lines: int = 30) -> str:
        # The v2 log stream is not read here; the last status seen says where it stopped.
        if not provider_id:
            return ""
        return await self.describe(provider_id)

    # -- terminate -----------------------------------------------------------------

    async def terminate(self, provider_id: str, instance_id: str) -> None:
        """Delete the pod (deleting one that is already gone succeeds). Without a pod id
        (a create whose answer never arrived), delete every pod named for the instance."""
        try:
            if provider_id:
                pod_ids = [provider_id]
            else:
                pod_ids = [str(p["id"]) for p in await self._pods_named(self.pod_name(instance_id))]
            for pod_id in pod_ids:
                await self._api().delete_pod(pod_id)
                self._last_seen.pop(pod_id, None)
        except RunpodError as exc:
            raise ProviderError(f"cannot terminate the pod of {instance_id}: {exc}") from None
