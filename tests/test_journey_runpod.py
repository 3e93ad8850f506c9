"""Journey 3 on the `runpod` provider: `auxen serve` provisions pods through the RunPod
stand-in (real HTTP, real vLLM behind its proxy), the OpenAI SDK streams through Auxen,
destroy deletes the pod; then the faults: no capacity, kill -9 of the control plane
during provisioning, during a stream and during destroy, a pod that vanishes, a pod that
never answers, and an orphaned pod. Afterwards: no orphaned or duplicate pods, every
instance in a truthful state, and the interrupted stream's usage recorded."""

from __future__ import annotations

import contextlib
import secrets
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from tests.runpod_standin import RunpodStandin
from tests.servers import AuxenServer, wait_for_state

pytestmark = pytest.mark.vllm

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
PREFIX = "auxen-"


class World:
    def __init__(self, server: AuxenServer, standin: RunpodStandin, key: str) -> None:
        self.server = server
        self.standin = standin
        self.key = key
        self.http = server.client(key)

    def provision(self, **extra: Any) -> dict[str, Any]:
        reply = self.http.post("/v1/instances", json={"model": MODEL, **extra})
        assert reply.status_code == 202, reply.text
        made: dict[str, Any] = reply.json()
        return made

    def get(self, instance_id: str) -> dict[str, Any]:
        current: dict[str, Any] = self.http.get(f"/v1/instances/{instance_id}").json()
        return current

    def pods_of(self, instance_id: str) -> list[str]:
        return [p.id for p in self.standin.live_pods(f"{PREFIX}{instance_id}")]

    def creates_of(self, instance_id: str) -> int:
        return sum(1 for b in self.standin.created if b["name"] == f"{PREFIX}{instance_id}")

    def kill9_and_restart(self) -> None:
        self.server.stop(signal.SIGKILL)
        self.server.start()

    def db_rows(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.server.data_dir / "auxen.db") as conn:
            return conn.execute(sql).fetchall()


def wait_until(check: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("runpod-journey")
    standin = RunpodStandin(tiny_model, root).start()
    standin._backend_for(MODEL)  # vLLM warms up while the control plane starts
    server = AuxenServer(
        root / "data",
        f"sqlite:///{root / 'data' / 'auxen.db'}",
        extra_env={
            **standin.env(),
            "AUXEN_INSTANCE_LEASE_S": "3",
            "AUXEN_USAGE_STREAM_STALE_S": "3",
        },
    )
    key = server.init_workspace("owner@example.com", usd="100")  # RunPod GPUs cost money
    server.start()
    try:
        yield World(server, standin, key)
    finally:
        server.stop()
        standin.stop()


def test_provision_stream_and_destroy_through_runpod(world: World) -> None:
    made = world.provision(idempotency_key="rp-journey-1")
    assert made["provider"] == "runpod" and made["gpu_type"] == "L4"
    details: set[str] = set()

    def ready() -> bool:
        current = world.get(made["id"])
        if current.get("status_detail"):
            details.add(current["status_detail"])
        assert current["state"] != "failed", current["last_error"]
        return current["state"] == "ready"

    wait_until(ready, "the pod to be ready", timeout=400)
    assert any("RunPod pod" in d or "vLLM answers" in d for d in details), details
    pod_id = world.pods_of(made["id"])
    assert len(pod_id) == 1
    body = next(b for b in world.standin.created if b["name"] == f"{PREFIX}{made['id']}")
    assert body["image"].startswith("vllm/vllm-openai") and body["ports"] == ["8000/http"]

    client = openai.OpenAI(base_url=made["endpoint"], api_key=made["instance_key"], max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    # The RunPod key went only to the API, never through the pod's proxy.
    assert all(world.standin.api_key not in seen for seen in world.standin.proxy_auth_seen)
    # The caller's own credentials and headers never reach the pod: only the instance's
    # upstream key does (and the body's credentials are refused before anything is sent).
    world.standin.proxy_headers_seen.clear()
    sent = httpx2.post(
        f"{made['endpoint']}/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers={"Authorization": f"Bearer {made['instance_key']}", "Cookie": "sid=caller",
                 "X-Api-Key": "caller-secret", "OpenAI-Organization": "org-caller"},
        timeout=120,
    )  # fmt: skip
    assert sent.status_code == 200, sent.text
    (seen,) = [h for path, h in world.standin.proxy_headers_seen if "chat/completions" in path]
    assert seen["authorization"] != f"Bearer {made['instance_key']}"
    assert not {"cookie", "x-api-key", "openai-organization"} & set(seen), seen
    assert made["instance_key"] not in str(seen) and "caller" not in str(seen)
    refused = httpx2.post(
        f"{made['endpoint']}/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}],
              "extra_body": {"headers": {"Authorization": "Bearer stolen"}}},
        headers={"Authorization": f"Bearer {made['instance_key']}"},
        timeout=60,
    )  # fmt: skip
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "extra_body.headers"
    chats = [p for p, _ in world.standin.proxy_headers_seen if "chat/completions" in p]
    assert len(chats) == 1  # the refused one never went upstream

    gone = world.http.delete(f"/v1/instances/{made['id']}").json()
    assert gone["state"] == "destroyed"
    assert world.pods_of(made["id"]) == [] and pod_id[0] in world.standin.deleted
    wait_until(
        lambda: (
            world.db_rows(
                "SELECT completion_tokens FROM usage_record "
                f"WHERE instance_id = '{made['id']}' AND stream"
            )
            == [(8,)]
        ),
        "the stream's usage row",
    )


def test_no_capacity_falls_back_to_the_next_gpu_type(world: World) -> None:
    world.standin.capacity_gpu_ids = {"NVIDIA L4"}
    try:
        made = world.provision(gpu_fallbacks=["A100-80GB"])
        assert made["hourly_price_micros"] == 1_990_000  # the dearest candidate, reserved
        ready = wait_for_state(world.http, made["id"], {"ready", "failed"})
        assert ready["state"] == "ready", ready["last_error"]
        assert ready["gpu_type"] == "A100-80GB" and ready["hourly_price_micros"] == 1_990_000
        world.standin.capacity_gpu_ids = {"NVIDIA L4", "NVIDIA A100 80GB PCIe"}
        none = world.provision(gpu_fallbacks=["A100-80GB"])
        failed = wait_for_state(world.http, none["id"], {"ready", "failed"})
        assert failed["state"] == "failed"
        assert "no longer any instances available" in failed["last_error"]
        assert world.pods_of(none["id"]) == []
    finally:
        world.standin.capacity_gpu_ids = set()
    world.http.delete(f"/v1/instances/{made['id']}")


def test_kill9_during_provisioning_then_restart_makes_exactly_one_pod(world: World) -> None:
    world.standin.create_delay_s = 30  # the pod exists; its create call has not answered
    made = world.provision()
    wait_until(lambda: world.creates_of(made["id"]) == 1, "the create call")
    assert world.get(made["id"])["state"] == "provisioning"
    world.server.stop(signal.SIGKILL)
    world.standin.create_delay_s = 0
    world.server.start()
    ready = wait_for_state(world.http, made["id"], {"ready", "failed"})
    assert ready["state"] == "ready", ready["last_error"]
    assert world.creates_of(made["id"]) == 1  # found the pod, did not ask for another
    assert len(world.pods_of(made["id"])) == 1
    pytest.shared_instance = made  # type: ignore[attr-defined]


def test_kill9_during_a_stream_records_its_usage_as_interrupted(world: World) -> None:
    made: dict[str, Any] = pytest.shared_instance  # type: ignore[attr-defined]
    got: list[bytes] = []
    started, release = threading.Event(), threading.Event()

    def stream() -> None:
        with (
            contextlib.suppress(httpx2.HTTPError),  # the control plane dies under it
            httpx2.stream(
                "POST",
                f"{made['endpoint']}/chat/completions",
                headers={"Authorization": f"Bearer {made['instance_key']}"},
                json={
                    "messages": [{"role": "user", "content": "a long story"}],
                    "max_tokens": 1800,
                    "ignore_eos": True,
                    # Big events: once the reader stops reading, the relay is held up by
                    # backpressure, so the stream is surely in flight at the kill.
                    "logprobs": True,
                    "top_logprobs": 20,
                    "stream": True,
                },
                timeout=120,
            ) as reply,
        ):
            for chunk in reply.iter_bytes():
                got.append(chunk)
                if len(got) == 5:
                    started.set()
                    release.wait(120)

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(120), "the stream never started"
    in_flight = (
        f"SELECT 1 FROM usage_record WHERE instance_id = '{made['id']}' "
        "AND outcome = 'streaming' AND completion_tokens > 0"
    )
    wait_until(lambda: world.db_rows(in_flight), "the in-flight stream's checkpoint")
    world.server.stop(signal.SIGKILL)
    release.set()
    reader.join(60)
    world.server.start()
    wait_until(
        lambda: world.db_rows(
            "SELECT outcome FROM usage_record WHERE stream = 1 AND "
            f"instance_id = '{made['id']}' AND outcome = 'interrupted'"
        ),
        "the interrupted stream's usage row",
    )
    ((tokens,),) = world.db_rows(
        "SELECT completion_tokens FROM usage_record WHERE "
        f"instance_id = '{made['id']}' AND outcome = 'interrupted'"
    )
    assert tokens > 0
    assert world.get(made["id"])["state"] == "ready"  # the pod itself is fine


def test_kill9_during_destroy_then_restart_finishes_it(world: World) -> None:
    made: dict[str, Any] = pytest.shared_instance  # type: ignore[attr-defined]
    world.standin.delete_delay_s = 30

    def destroy() -> None:
        with contextlib.suppress(httpx2.HTTPError):  # the control plane dies under it
            httpx2.delete(
                f"{world.server.url}/v1/instances/{made['id']}",
                headers={"Authorization": f"Bearer {world.key}"},
                timeout=60,
            )

    threading.Thread(target=destroy, daemon=True).start()
    wait_until(lambda: world.get(made["id"])["state"] == "stopping", "stopping")
    world.server.stop(signal.SIGKILL)
    world.standin.delete_delay_s = 0
    world.server.start()
    done = wait_for_state(world.http, made["id"], {"destroyed"}, timeout=60)
    assert done["destroyed_at"] is not None
    assert world.pods_of(made["id"]) == []


def test_a_pod_that_vanishes_fails_its_instance(world: World) -> None:
    made = world.provision()
    ready = wait_for_state(world.http, made["id"], {"ready", "failed"})
    assert ready["state"] == "ready", ready["last_error"]
    (pod_id,) = world.pods_of(made["id"])
    world.standin.vanish(pod_id)
    failed = wait_for_state(world.http, made["id"], {"failed"}, timeout=60)
    assert "gone" in failed["last_error"]


def test_an_orphaned_pod_is_terminated_by_auxen_reconcile(world: World) -> None:
    world.server.stop()  # the one-shot command runs with no server
    with httpx2.Client(headers={"Authorization": f"Bearer {world.standin.api_key}"}) as c:
        orphan = c.post(
            f"{world.standin.api_url}/v2/pods",
            json={
                "name": f"{PREFIX}inst_orphan0001",
                "image": "vllm/vllm-openai:v0.11.0",
                "gpu": {"id": "NVIDIA L4", "count": 1},
                "args": f"--served-model-name {MODEL}",
            },
        ).json()
    result = world.server.cli("reconcile")
    assert "orphaned resources terminated: 1" in result.stdout, result.stdout + result.stderr
    assert orphan["id"] in world.standin.deleted


def test_a_pod_that_never_answers_fails_after_the_ready_timeout(world: World) -> None:
    world.server.extra_env["AUXEN_RUNPOD_READY_TIMEOUT_S"] = "6"
    world.server.start()
    world.standin.never_ready = True
    try:
        made = world.provision()
        failed = wait_for_state(world.http, made["id"], {"ready", "failed"}, timeout=60)
    finally:
        world.standin.never_ready = False
    assert failed["state"] == "failed" and "not ready after 6s" in failed["last_error"]
    # The failure is recorded first, then its pod is terminated.
    wait_until(lambda: world.pods_of(made["id"]) == [], "the pod to be terminated", timeout=30)


def test_a_workspace_with_its_own_runpod_key_runs_pods_in_its_account(world: World) -> None:
    own_key, hf_token = "rpa_" + secrets.token_hex(16), "hf_" + secrets.token_hex(17)
    world.standin.add_account(own_key)
    _, key = world.server.workspace("byok@example.com", usd="50")
    http = world.server.client(key)
    for provider, secret in (("runpod", own_key), ("huggingface", hf_token)):
        stored = http.put(f"/v1/credentials/{provider}", json={"secret": secret})
        assert stored.status_code == 200, stored.text
        assert secret not in stored.text and stored.json()["last4"] == secret[-4:]
    made = http.post("/v1/instances", json={"model": MODEL}).json()
    wait_until(lambda: http.get(f"/v1/instances/{made['id']}").json()["state"] == "ready",
               "the BYOK pod to be ready", timeout=400)  # fmt: skip
    pods = world.standin.live_pods(f"{PREFIX}{made['id']}")
    assert [p.account for p in pods] == [own_key]  # in the workspace's own account
    assert pods[0].body["env"]["HF_TOKEN"] == hf_token  # its own token, for gated models
    # A reconcile pass finds the pod in that account (it is no orphan, nor lost).
    report = world.server.cli("reconcile")
    assert made["id"] not in report.stdout and pods[0].id not in report.stdout, report.stdout
    assert http.get(f"/v1/instances/{made['id']}").json()["state"] == "ready"
    # The key cannot change under a running pod; after destroy it can.
    changed = http.put("/v1/credentials/runpod", json={"secret": "rpa_" + "x" * 20})
    assert changed.status_code == 409 and changed.json()["error"]["param"] == "provider"
    assert http.delete(f"/v1/instances/{made['id']}").json()["state"] == "destroyed"
    assert world.standin.live_pods(f"{PREFIX}{made['id']}") == []
    assert pods[0].id in world.standin.deleted
    assert http.delete("/v1/credentials/runpod").status_code == 204


def test_no_orphaned_or_duplicate_pods_and_truthful_states(world: World) -> None:
    states = dict(world.db_rows("SELECT id, state FROM instance"))
    live = {i for i, s in states.items() if s in ("provisioning", "starting", "ready")}
    pods = world.standin.live_pods(PREFIX)
    owners = [p.name.removeprefix(PREFIX) for p in pods]
    assert sorted(owners) == sorted(live)  # one pod per live instance, nothing else
    for instance_id in live:
        world.http.delete(f"/v1/instances/{instance_id}")
    assert world.standin.live_pods(PREFIX) == []
    assert set(dict(world.db_rows("SELECT id, state FROM instance")).values()) <= {
        "destroyed",
        "failed",
    }
    log = world.server.stop_clean()
    assert world.standin.api_key not in log
