"""A RunPod pod stops itself when its paid window is not extended (issue 17, item 4).

Pods of Auxen's pod image run `pod_watchdog.py` as their entrypoint; the RunPod stand-in
runs it for real, with the pod id and pod-scoped key RunPod gives every pod. The control
plane moves the deadline through the pod's watchdog port (`keep_until`); left alone, the
watchdog stops its own pod through RunPod's API (`POST /v2/pods/{id}/action`, `stop`), so
the pod stops even while no control plane runs.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest

from auxen.config import Settings
from auxen.inference.providers.base import LaunchSpec, ProviderError, ResourceStatus
from auxen.inference.providers.runpod import RunpodProvider
from tests.runpod_standin import WATCHDOG_IMAGE, RunpodStandin


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunpodStandin]:
    root = tmp_path_factory.mktemp("runpod-watchdog")
    rp = RunpodStandin(root, root)
    rp.start_backends = False  # the watchdog is the point, not vLLM
    rp.start()
    yield rp
    rp.stop()


def provider(standin: RunpodStandin, tmp_path: Path) -> RunpodProvider:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        master_key=base64.b64encode(b"k" * 32).decode(),
        runpod_api_key=standin.api_key,
        runpod_api_url=standin.api_url,
        runpod_proxy_url=standin.proxy_template,
        runpod_image=WATCHDOG_IMAGE,
        runpod_watchdog=True,
        runpod_watchdog_url=standin.proxy_template + "-8001",
    )
    return RunpodProvider(settings)


def spec(instance_id: str, paid_until: datetime) -> LaunchSpec:
    return LaunchSpec(
        instance_id=instance_id,
        model="Qwen/Qwen2.5-0.5B-Instruct",
        gpu_type="L4",
        served_model_name="Qwen/Qwen2.5-0.5B-Instruct",
        upstream_api_key="upstream-secret-123",
        paid_until=paid_until,
    )


async def extend_when_up(rp: RunpodProvider, pod_id: str, instance_id: str, to: datetime) -> None:
    """keep_until, once the pod's watchdog answers (the pod is still starting)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            await rp.keep_until(pod_id, instance_id, to)
            return
        except ProviderError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_an_unextended_pod_stops_itself_and_the_control_plane_moves_its_deadline(
    standin: RunpodStandin, tmp_path: Path
) -> None:
    rp = provider(standin, tmp_path)
    try:
        launched = datetime.now(UTC) + timedelta(minutes=10)
        resource = await rp.create(spec("inst_wd1", launched))
        body = standin.created[-1]
        assert body["ports"] == ["8000/http", "8001/http"]
        assert float(body["env"]["AUXEN_PAID_UNTIL"]) == pytest.approx(launched.timestamp())
        pod_id = resource.provider_id
        # A wrong token moves nothing.
        url = f"{standin.proxy_template.format(pod_id=pod_id)}-8001/paid-until"
        async with httpx2.AsyncClient() as http:
            while (await http.get(url)).status_code in (404, 502):  # noqa: ASYNC110 (starting)
                await asyncio.sleep(0.2)
            forged = await http.put(
                url, json={"paid_until": 0}, headers={"Authorization": "Bearer guess"}
            )
            assert forged.status_code == 401
        # The control plane extends (here: to a near end), then is gone.
        paid_until = datetime.now(UTC) + timedelta(seconds=3)
        await extend_when_up(rp, pod_id, "inst_wd1", paid_until)
        deadline = time.monotonic() + 60
        while await rp.status(pod_id) is ResourceStatus.RUNNING:
            assert time.monotonic() < deadline, standin.pod_log(pod_id)
            await asyncio.sleep(0.2)
        assert await rp.status(pod_id) is ResourceStatus.EXITED
        [(stopped, action, at)] = standin.actions
        assert (stopped, action) == (pod_id, "stop")
        assert at >= paid_until.timestamp()  # not before what was paid
        assert "paid window ended" in standin.pod_log(pod_id)
        # The reconciler sees a pod that only needs deleting, and deletes it.
        [owned] = [r for r in await rp.list_owned() if r.provider_id == pod_id]
        assert owned.running is False
        await rp.terminate(pod_id, "inst_wd1")
        assert pod_id in standin.deleted
    finally:
        await rp.close()
