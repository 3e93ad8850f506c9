"""Journey 3, on real vLLM processes: code with an account key provisions instances over
REST, the OpenAI SDK talks to them through Auxen with instance keys, usage is metered
without content, a control-plane restart re-attaches, and destroy leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from tests.servers import AuxenServer, wait_for_state

pytestmark = pytest.mark.vllm

MARKER = "zebra-quartz-7731"  # a prompt marker that must never be stored


class World:
    def __init__(self, server: AuxenServer, key: str, model: Path) -> None:
        self.server = server
        self.key = key
        self.model = str(model)
        self.http = server.client(key)
        self.made: dict[str, dict[str, Any]] = {}

    def sdk(self, name: str, key: str | None = None) -> openai.OpenAI:
        made = self.made[name]
        return openai.OpenAI(
            base_url=made["endpoint"], api_key=key or made["instance_key"], max_retries=0
        )

    def db_rows(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.server.data_dir / "auxen.db") as conn:
            return conn.execute(sql).fetchall()

    def provider_pid(self, name: str) -> int:
        state = self.server.data_dir / "instances" / self.made[name]["id"] / "provider.json"
        return int(json.loads(state.read_text())["pid"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("journey")
    server = AuxenServer(root / "data", f"sqlite:///{root / 'data' / 'auxen.db'}")
    key = server.init_workspace("owner@example.com")
    server.start()
    w = World(server, key, tiny_model)
    # Start every instance the module needs at once: vLLM warm-up dominates the time.
    for name, extra in (("a", {"idempotency_key": "journey-a"}), ("b", {}), ("ttl", {"ttl": 60})):
        reply = w.http.post("/v1/instances", json={"model": w.model, **extra})
        assert reply.status_code == 202, reply.text
        w.made[name] = reply.json()
    try:
        yield w
    finally:
        for made in w.made.values():
            w.http.delete(f"/v1/instances/{made['id']}")
        server.stop()


def test_provision_answers_at_once_with_a_key_shown_once(world: World) -> None:
    a = world.made["a"]
    assert a["state"] == "provisioning"
    assert a["instance_key"].startswith("auxk_")
    assert a["endpoint"] == f"{world.server.url}/v1/instances/{a['id']}"
    listed = world.http.get("/v1/instances").json()["data"]
    assert {i["id"] for i in listed} >= {m["id"] for m in world.made.values()}
    assert all("instance_key" not in i for i in listed)
    stored = world.db_rows(f"SELECT secret_hash FROM api_key WHERE instance_id = '{a['id']}'")
    assert stored and all(a["instance_key"].encode() not in row[0] for row in stored)


def test_retried_provision_returns_the_same_instance(world: World) -> None:
    again = world.http.post(
        "/v1/instances", json={"model": world.model, "idempotency_key": "journey-a"}
    )
    assert again.status_code == 200
    body = again.json()
    assert body["id"] == world.made["a"]["id"] and body["idempotent_replay"] is True
    # The first answer may have been lost: the retry carries the same, working key.
    assert body["instance_key"] == world.made["a"]["instance_key"]
    clash = world.http.post(
        "/v1/instances", json={"model": world.model, "idempotency_key": "journey-a", "ttl": 120}
    )
    assert clash.status_code == 409
    assert clash.json()["error"]["param"] == "idempotency_key"


def test_instances_become_ready_after_a_real_completion(world: World) -> None:
    for name in ("a", "b"):
        ready = wait_for_state(world.http, world.made[name]["id"], {"ready", "failed"})
        assert ready["state"] == "ready", ready["last_error"]
        assert ready["ready_at"] is not None
    # Let the third instance finish warming up too: on two cores a warm-up starves the
    # other servers' API processes, and vLLM then sends its stream in bursts.
    wait_for_state(world.http, world.made["ttl"]["id"], {"ready", "failed", "destroyed"})
    log = (world.server.data_dir / "instances" / world.made["a"]["id"] / "vllm.log").read_text()
    assert "/v1/completions" in log  # the second readiness stage really ran


def test_not_ready_instance_answers_409(world: World) -> None:
    ttl = world.http.get(f"/v1/instances/{world.made['ttl']['id']}").json()
    if ttl["state"] == "ready":
        pytest.skip("the ttl instance was already ready")
    reply = httpx2.post(
        f"{world.made['ttl']['endpoint']}/chat/completions",
        headers={"Authorization": f"Bearer {world.made['ttl']['instance_key']}"},
        json={"messages": [{"role": "user", "content": "hi"}]},
    )
    assert reply.status_code in (409, 401)  # 401 once the TTL destroyed it and its key


def test_openai_sdk_works_unchanged(world: World) -> None:
    client = world.sdk("a")
    models = client.models.list()
    assert [m.id for m in models.data] == [world.model]

    chat = client.chat.completions.create(
        model=world.model, messages=[{"role": "user", "content": f"say {MARKER}"}], max_tokens=5
    )
    assert chat.usage is not None and chat.usage.completion_tokens == 5
    assert chat.choices[0].finish_reason == "length"

    plain = client.completions.create(model=world.model, prompt=f"{MARKER}", max_tokens=3)
    assert plain.usage is not None and plain.usage.completion_tokens == 3

    chunks = list(
        client.chat.completions.create(
            model=world.model,
            messages=[{"role": "user", "content": MARKER}],
            max_tokens=6,
            stream=True,
        )
    )
    # Auxen asked upstream for usage, but the caller did not: that chunk is stripped.
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"

    with_usage = list(
        client.chat.completions.create(
            model=world.model,
            messages=[{"role": "user", "content": MARKER}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens == 4


def test_streaming_is_not_buffered(world: World) -> None:
    """Tokens reach the caller spread out as upstream produced them, not in one block.

    On two cores vLLM itself sometimes emits a stream in bursts, so the caller's view is
    compared with the proxy's own record of the upstream stream (the usage row's time to
    first token and end) rather than with a fixed expectation. A process starved by the
    scheduler for a second (other vLLM servers warm up on the same two cores) can still
    bunch one stream up, so up to three streams are tried: a relay that buffers would
    bunch up every one of them."""
    body = {
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    spreads: list[tuple[float, float]] = []
    for attempt in range(3):
        content_at: list[float] = []
        start = time.perf_counter()
        with httpx2.stream(
            "POST",
            f"{world.made['a']['endpoint']}/chat/completions",
            json={**body, "seed": attempt},
            headers={"Authorization": f"Bearer {world.made['a']['instance_key']}"},
            timeout=60,
        ) as reply:
            assert reply.status_code == 200
            assert reply.headers["content-type"].startswith("text/event-stream")
            for line in reply.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    content_at.append(time.perf_counter() - start)
        assert len(content_at) > 100
        time.sleep(0.5)
        ttft_ms, latency_ms = world.db_rows(
            "SELECT ttft_ms, latency_ms FROM usage_record WHERE completion_tokens = 1500 "
            f"AND instance_id = '{world.made['a']['id']}' ORDER BY created_at"
        )[-1]
        upstream_spread = (latency_ms - ttft_ms) / 1000
        caller_spread = content_at[-1] - content_at[0]
        spreads.append((caller_spread, upstream_spread))
        if caller_spread >= 0.5 * upstream_spread - 0.05:
            return
    raise AssertionError(f"every stream reached the caller in one block: {spreads}")


def test_usage_is_recorded_without_content(world: World) -> None:
    time.sleep(0.5)  # one flush interval
    rows = world.db_rows(
        "SELECT endpoint, stream, status_code, outcome, prompt_tokens, completion_tokens, "
        f"latency_ms, ttft_ms FROM usage_record WHERE instance_id = '{world.made['a']['id']}'"
    )
    assert len(rows) >= 4
    assert {r[0] for r in rows} >= {"chat/completions", "completions"}
    assert all(r[2] == 200 and r[3] == "ok" for r in rows), rows
    assert all(r[4] > 0 and r[6] > 0 for r in rows)
    assert all(r[5] > 0 for r in rows if r[3] == "ok")
    assert any(r[1] and r[7] is not None for r in rows)  # streamed calls carry TTFT
    usage = world.http.get("/v1/usage", params={"instance_id": world.made["a"]["id"]}).json()
    assert usage["requests"] == len(rows)
    assert usage["completion_tokens"] == sum(r[5] for r in rows)
    # Zero retention: the marker is nowhere in the database files or the server log.
    for path in world.server.data_dir.glob("auxen.db*"):
        assert MARKER.encode() not in path.read_bytes(), path
    assert MARKER not in world.server.log_path.read_text()


def test_instance_key_only_reaches_its_own_instance(world: World) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        world.sdk("b", key=world.made["a"]["instance_key"]).models.list()
    # Instance keys cannot call the account API either.
    reply = world.server.client(world.made["a"]["instance_key"]).get("/v1/instances")
    assert reply.status_code == 403


def test_other_workspaces_cannot_see_the_instance(world: World) -> None:
    other = world.server.init_workspace("intruder@example.com")
    http = world.server.client(other)
    assert http.get(f"/v1/instances/{world.made['a']['id']}").status_code == 404
    assert http.delete(f"/v1/instances/{world.made['a']['id']}").status_code == 404
    assert world.made["a"]["id"] not in {i["id"] for i in http.get("/v1/instances").json()["data"]}
    with pytest.raises(openai.NotFoundError):
        world.sdk("a", key=other).models.list()
    assert world.http.get(f"/v1/instances/{world.made['a']['id']}").json()["state"] == "ready"


def test_bad_inference_requests_get_clear_errors(world: World) -> None:
    url = f"{world.made['a']['endpoint']}/chat/completions"
    auth = {"Authorization": f"Bearer {world.made['a']['instance_key']}"}
    cases = [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (json.dumps({"model": "someone-else", "messages": []}).encode(), 404, "model"),
        (json.dumps({"messages": "x"}).encode(), 400, "messages"),
        (
            json.dumps({"messages": [], "stream": True, "stream_options": 3}).encode(),
            400,
            "stream_options",
        ),
        (b"{" + b" " * 2_000_000 + b"}", 413, None),
    ]
    for body, status, param in cases:
        reply = httpx2.post(url, content=body, headers={**auth, "Content-Type": "application/json"})
        assert reply.status_code == status, (body[:40], reply.text)
        error = reply.json()["error"]
        assert error["message"]
        if param:
            assert error["param"] == param, error
    assert httpx2.post(url, json={"messages": []}).status_code == 401
    assert (
        httpx2.post(
            url, json={"messages": []}, headers={"Authorization": "Bearer auxk_nonsense"}
        ).status_code
        == 401
    )
    assert (
        httpx2.post(
            f"{world.server.url}/v1/instances/inst_nope/chat/completions",
            json={"messages": []},
            headers=auth,
        ).status_code
        == 403
    )
    # None of it hurt the instance.
    ok = world.sdk("a").chat.completions.create(
        model=world.model, messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    assert ok.usage is not None


def test_upstream_dying_mid_stream_ends_with_an_error_event(world: World) -> None:
    client = world.sdk("b")
    # A long generation (seconds), killed as soon as the first tokens arrive.
    stream = client.chat.completions.create(
        model=world.model,
        messages=[{"role": "user", "content": "long"}],
        max_tokens=1800,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    received = 0
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
            if received == 1:
                os.killpg(world.provider_pid("b"), signal.SIGKILL)
    assert "stopped mid-stream" in str(caught.value)
    time.sleep(0.5)
    rows = world.db_rows(
        "SELECT outcome, completion_tokens FROM usage_record "
        f"WHERE instance_id = '{world.made['b']['id']}' AND outcome != 'ok'"
    )
    assert rows and rows[0][0] == "upstream_error" and 1 <= rows[0][1] < 1800
    # The reconciler notices the dead process: failed, with the log's end as the reason.
    failed = wait_for_state(world.http, world.made["b"]["id"], {"failed"}, timeout=30)
    assert "gone" in failed["last_error"]


def test_restarted_control_plane_reattaches_to_live_instances(world: World) -> None:
    pid = world.provider_pid("a")
    world.server.stop(signal.SIGKILL)  # a crash, not a clean shutdown
    world.server.start()
    current = world.http.get(f"/v1/instances/{world.made['a']['id']}").json()
    assert current["state"] == "ready"
    assert world.provider_pid("a") == pid
    chat = world.sdk("a").chat.completions.create(
        model=world.model, messages=[{"role": "user", "content": "still there?"}], max_tokens=2
    )
    assert chat.usage is not None and chat.usage.completion_tokens == 2


def test_cli_shows_and_manages_the_same_instances(world: World) -> None:
    listed = json.loads(
        world.server.cli("instances", "list", "--json", AUXEN_API_KEY=world.key).stdout
    )
    assert world.made["a"]["id"] in {i["id"] for i in listed}
    got = json.loads(
        world.server.cli("instances", "get", world.made["a"]["id"], AUXEN_API_KEY=world.key).stdout
    )
    assert got["state"] == "ready"
    made = world.server.cli(
        "keys", "create", "--instance", world.made["a"]["id"], AUXEN_API_KEY=world.key
    ).stdout
    extra_key = next(line for line in made.splitlines() if line.startswith("auxk_"))
    chat = world.sdk("a", key=extra_key).chat.completions.create(
        model=world.model, messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    assert chat.usage is not None


def test_destroy_during_provisioning_leaves_no_process(world: World) -> None:
    made = world.http.post("/v1/instances", json={"model": world.model}).json()
    world.made["short"] = made
    done = world.http.delete(f"/v1/instances/{made['id']}")
    assert done.status_code == 200 and done.json()["state"] == "destroyed"
    time.sleep(2)  # a bring-up that was mid-spawn must not resurrect anything
    assert world.http.get(f"/v1/instances/{made['id']}").json()["state"] == "destroyed"
    assert not (world.server.data_dir / "instances" / made["id"]).exists()
    leftovers = [
        p for p in Path("/proc").glob("[0-9]*/environ") if _environ_mentions(p, made["id"])
    ]
    assert leftovers == []


def _environ_mentions(environ: Path, text: str) -> bool:
    try:
        return text.encode() in (environ.parent / "cmdline").read_bytes() + environ.read_bytes()
    except OSError:
        return False


def test_ttl_destroys_the_instance(world: World) -> None:
    done = wait_for_state(world.http, world.made["ttl"]["id"], {"destroyed"}, timeout=120)
    assert done["destroy_reason"] == "ttl_expired"
    assert not (world.server.data_dir / "instances" / world.made["ttl"]["id"]).exists()


def test_destroy_deletes_everything_and_is_repeatable(world: World) -> None:
    a = world.made["a"]
    pid = world.provider_pid("a")
    first = world.http.delete(f"/v1/instances/{a['id']}")
    assert first.status_code == 200 and first.json()["state"] == "destroyed"
    assert first.json()["destroy_reason"] == "requested"
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert not (world.server.data_dir / "instances" / a["id"]).exists()
    assert world.db_rows(f"SELECT id FROM api_key WHERE instance_id = '{a['id']}'") == []
    with pytest.raises(openai.AuthenticationError):
        world.sdk("a").models.list()
    again = world.http.delete(f"/v1/instances/{a['id']}")
    assert again.status_code == 200 and again.json()["state"] == "destroyed"
    assert again.json()["destroyed_at"] == first.json()["destroyed_at"]


def test_a_model_vllm_cannot_load_fails_with_its_log(world: World, tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    made = world.http.post("/v1/instances", json={"model": str(broken)}).json()
    world.made["broken"] = made
    failed = wait_for_state(world.http, made["id"], {"failed", "ready"}, timeout=300)
    assert failed["state"] == "failed"
    assert "last lines of the vLLM log" in failed["last_error"]
    assert not (world.server.data_dir / "instances" / made["id"]).exists()
