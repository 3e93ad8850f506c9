"""The RunPod provider against the RunPod stand-in's real HTTP API: the documented v2
shapes, capacity fallback, 429 with RateLimit, 5xx bursts, timeouts that hide a created
pod, bad keys, vanished pods, and the provider key staying out of logs and errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from auxen.config import Settings
from auxen.inference.providers.base import LaunchSpec, ProviderError, ResourceStatus
from auxen.inference.providers.runpod import RunpodProvider
from auxen.inference.providers.runpod_api import RetryPolicy, RunpodApi, rate_limit_wait
from tests.runpod_standin import RunpodStandin


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunpodStandin]:
    root = tmp_path_factory.mktemp("runpod")
    rp = RunpodStandin(root, root)
    rp.start_backends = False  # these tests never talk to a pod's vLLM
    rp.start()
    yield rp
    rp.stop()


@pytest.fixture(autouse=True)
def clean(standin: RunpodStandin) -> Iterator[None]:
    yield
    standin.pods.clear()
    standin.capacity_gpu_ids.clear()
    standin.rate_limit_next = standin.errors_next = standin.timeouts_next = 0


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def provider(standin: RunpodStandin, sleeps: Sleeps, key: str | None = None) -> RunpodProvider:
    settings = Settings(
        _env_file=None,
        data_dir=Path("/nonexistent"),
        runpod_api_key=key or standin.api_key,
        runpod_api_url=standin.api_url,
        runpod_proxy_url=standin.proxy_template,
    )
    api = RunpodApi(
        standin.api_url,
        key or standin.api_key,
        timeout_s=1.0,
        retry=RetryPolicy(max_attempts=4, max_backoff_s=30.0),
        sleep=sleeps,
    )
    return RunpodProvider(settings, api=api)


def spec(instance_id: str = "inst_a1", *fallbacks: str) -> LaunchSpec:
    return LaunchSpec(
        instance_id=instance_id,
        model="Qwen/Qwen2.5-0.5B-Instruct",
        gpu_type="L4",
        served_model_name="Qwen/Qwen2.5-0.5B-Instruct",
        upstream_api_key="upstream-secret-123",
        gpu_fallbacks=fallbacks,
    )


async def test_create_sends_the_documented_body_and_owns_pods_by_name(
    standin: RunpodStandin,
) -> None:
    rp = provider(standin, Sleeps())
    resource = await rp.create(spec())
    body = standin.created[-1]
    assert body["name"] == "auxen-inst_a1"
    assert body["gpu"] == {"id": "NVIDIA L4", "count": 1}
    assert body["ports"] == ["8000/http"] and body["cloud"] == "SECURE"
    assert body["env"]["VLLM_API_KEY"] == "upstream-secret-123"
    assert "--served-model-name Qwen/Qwen2.5-0.5B-Instruct" in body["args"]
    assert "upstream-secret-123" not in body["args"]
    assert resource.endpoint == f"http://127.0.0.1:{standin.proxy_port}/{resource.provider_id}"
    assert resource.gpu_type == "L4"
    # A pod of another deployment on the same account is not ours.
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {standin.api_key}"}) as c:
        other = {"name": "other-inst_b", "image": "x", "gpu": {"id": "NVIDIA L4", "count": 1}}
        assert (await c.post(f"{standin.api_url}/v2/pods", json=other)).status_code == 201
    owned = await rp.list_owned()
    assert [(o.instance_id, o.provider_id) for o in owned] == [("inst_a1", resource.provider_id)]
    # Creating again (a retry after a lost answer) adopts the same pod.
    again = await rp.create(spec())
    assert again.provider_id == resource.provider_id
    assert len(standin.live_pods("auxen-")) == 1
    await rp.close()


async def test_unknown_fields_are_refused_like_the_real_api(standin: RunpodStandin) -> None:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {standin.api_key}"}) as c:
        body = {"name": "x", "image": "y", "gpu": {"id": "NVIDIA L4"}, "gpuTypeIds": ["a"]}
        reply = await c.post(f"{standin.api_url}/v2/pods", json=body)
    assert reply.status_code == 422
    assert reply.headers["content-type"].startswith("application/problem+json")


async def test_no_capacity_moves_to_the_next_gpu_type_then_fails_clearly(
    standin: RunpodStandin,
) -> None:
    rp = provider(standin, Sleeps())
    standin.capacity_gpu_ids = {"NVIDIA L4"}
    resource = await rp.create(spec("inst_c1", "A100-80GB"))
    assert resource.gpu_type == "A100-80GB"
    assert standin.created[-1]["gpu"]["id"] == "NVIDIA A100 80GB PCIe"
    standin.capacity_gpu_ids = {"NVIDIA L4", "NVIDIA A100 80GB PCIe"}
    with pytest.raises(ProviderError) as failed:
        await rp.create(spec("inst_c2", "A100-80GB"))
    assert "no capacity" in str(failed.value)
    assert "no longer any instances available" in str(failed.value)  # the problem detail
    assert not standin.live_pods("auxen-inst_c2")
    await rp.close()


async def test_429_waits_as_the_ratelimit_header_says(standin: RunpodStandin) -> None:
    sleeps = Sleeps()
    rp = provider(standin, sleeps)
    standin.rate_limit_next, standin.rate_limit_reset_s = 2, 7
    await rp.create(spec("inst_r1"))
    assert sleeps[:2] == [7.0, 7.0]  # the exhausted "minute" window, not the day's reset
    assert len(standin.live_pods("auxen-inst_r1")) == 1
    # A reset longer than the client is willing to wait is an error, not a hang.
    standin.rate_limit_next, standin.rate_limit_reset_s = 1, 3600
    with pytest.raises(ProviderError, match="rate-limiting"):
        await rp.list_owned()
    standin.rate_limit_reset_s = 1
    await rp.close()


def test_rate_limit_wait_reads_retry_after_and_both_ratelimit_forms() -> None:
    assert rate_limit_wait(httpx2.Headers({"Retry-After": "12"})) == 12.0
    assert rate_limit_wait(httpx2.Headers({"RateLimit": '"minute";r=0;t=9, "day";r=5;t=80'})) == 9
    assert rate_limit_wait(httpx2.Headers({"RateLimit": "limit=10, remaining=0, reset=4"})) == 4
    assert rate_limit_wait(httpx2.Headers({})) is None


async def test_5xx_bursts_are_retried_with_bounded_jittered_backoff(
    standin: RunpodStandin,
) -> None:
    sleeps = Sleeps()
    rp = provider(standin, sleeps)
    resource = await rp.create(spec("inst_e1"))
    standin.errors_next = 3
    assert await rp.status(resource.provider_id) is ResourceStatus.RUNNING
    assert len(sleeps) == 3 and all(0 <= s <= 30 for s in sleeps)
    standin.errors_next = 10
    with pytest.raises(ProviderError) as failed:
        await rp.status(resource.provider_id)
    assert "503" in str(failed.value) and "upstream scheduler unavailable" in str(failed.value)
    await rp.close()


async def test_a_create_that_times_out_finds_its_pod_instead_of_making_a_second(
    standin: RunpodStandin,
) -> None:
    rp = provider(standin, Sleeps())
    standin.timeouts_next, standin.timeout_hold_s = 1, 2.5  # the client gives up after 1 s
    resource = await rp.create(spec("inst_t1"))
    pods = standin.live_pods("auxen-inst_t1")
    assert [p.id for p in pods] == [resource.provider_id]
    await rp.close()


async def test_a_bad_key_is_a_clear_error_that_never_shows_the_key(
    standin: RunpodStandin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rp = provider(standin, Sleeps(), key="rpa_wrong_key_987")
    with pytest.raises(ProviderError) as failed:
        await rp.create(spec("inst_k1"))
    assert "AUXEN_RUNPOD_API_KEY" in str(failed.value) and "401" in str(failed.value)
    assert "rpa_wrong_key_987" not in str(failed.value)
    assert "rpa_wrong_key_987" not in repr(rp.api)
    good = provider(standin, Sleeps())
    standin.rate_limit_next, standin.errors_next = 1, 1
    resource = await good.create(spec("inst_k2"))
    await good.terminate(resource.provider_id, "inst_k2")
    assert standin.api_key not in caplog.text and "rpa_wrong_key_987" not in caplog.text
    assert "upstream-secret-123" not in caplog.text
    await rp.close()
    await good.close()


async def test_a_vanished_pod_is_gone_and_terminating_it_is_harmless(
    standin: RunpodStandin,
) -> None:
    rp = provider(standin, Sleeps())
    resource = await rp.create(spec("inst_v1"))
    standin.vanish(resource.provider_id)
    assert await rp.status(resource.provider_id) is ResourceStatus.GONE
    await rp.terminate(resource.provider_id, "inst_v1")
    # Without a pod id (a create whose answer never came), every pod of the name goes.
    await rp.create(spec("inst_v2"))
    await rp.terminate("", "inst_v2")
    assert not standin.live_pods("auxen-inst_v2")
    await rp.close()
