"""Bad input on every MCP tool: missing, wrong-typed, out-of-range and hostile arguments
(other workspaces' ids, huge strings) get a tool error naming the argument, and change
nothing. Plus the gates in front of the tools: keys, origins, session binding.

The instances here run a process that never becomes ready (not vLLM): these tests are
about what stands in front of an instance, and a `starting` instance is what they need.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from sqlmodel import select

from auxen.store.db import Database
from auxen.store.models import ApiKey, Instance, UsageRecord
from tests.mcp_clients import INITIALIZE, error_text, http_client, stdio_client, structured
from tests.servers import REPO, AuxenServer, wait_for_state

MAX_BODY = 65_536


@dataclass
class World:
    server: AuxenServer
    key: str  # workspace A, live
    other_key: str  # workspace B, live
    mine: str  # an instance of A, stuck in `starting`
    theirs: str  # an instance of B, stuck in `starting`
    instance_key: str  # A's auxk_ key for `mine`

    def snapshot(self) -> tuple[Any, ...]:
        async def read() -> tuple[Any, ...]:
            db = Database(self.server.database_url)
            try:
                async with db.system() as s:
                    instances = sorted(
                        (i.id, i.state.value, i.expires_at)
                        for i in (await s.exec(select(Instance))).all()
                    )
                    keys = sorted(
                        (k.id, k.revoked_at) for k in (await s.exec(select(ApiKey))).all()
                    )
                    usage = len((await s.exec(select(UsageRecord))).all())
                    return tuple(instances), tuple(keys), usage
            finally:
                await db.close()

        return asyncio.run(read())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("mcp-input")
    model_dir = root / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    never_ready = f"{sys.executable} -c 'import time; time.sleep(3600)'"
    server = AuxenServer(
        root / "data",
        f"sqlite:///{root / 'auxen.db'}",
        extra_env={"AUXEN_VLLM_COMMAND": never_ready, "AUXEN_MAX_BODY_BYTES": str(MAX_BODY)},
    )
    key = server.init_workspace("a@example.com")
    other_key = server.init_workspace("b@example.com")
    server.start()
    made = {}
    for name, k in (("mine", key), ("theirs", other_key)):
        reply = server.client(k).post("/v1/instances", json={"model": str(model_dir)})
        assert reply.status_code == 202, reply.text
        made[name] = reply.json()
        wait_for_state(server.client(k), made[name]["id"], {"starting"}, timeout=30)
    try:
        yield World(
            server,
            key,
            other_key,
            made["mine"]["id"],
            made["theirs"]["id"],
            made["mine"]["instance_key"],
        )
    finally:
        for name, k in (("mine", key), ("theirs", other_key)):
            server.client(k).delete(f"/v1/instances/{made[name]['id']}")
        server.stop_clean()


async def call(world: World, tool: str, args: dict[str, Any], key: str | None = None) -> Any:
    async with http_client(world.server.url, key or world.key) as client:
        return await client.call_tool(tool, args)


HUGE = "x" * 20_000

# (tool, arguments, the argument the error must name)
BAD_CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("provision_instance", {}, "model"),
    ("provision_instance", {"model": "org/name", "gpu_fallbacks": ["H100-80GB"]}, "gpu_fallbacks"),
    ("provision_instance", {"model": "org/name", "gpu_fallbacks": "cpu"}, "gpu_fallbacks"),
    ("provision_instance", {"model": "org/name", "spend_cap_usd": -1}, "spend_cap_usd"),
    ("provision_instance", {"model": "org/x", "idle_timeout_minutes": 0}, "idle_timeout_minutes"),
    ("provision_instance", {"model": 5}, "model"),
    ("provision_instance", {"model": ["org/name"]}, "model"),
    ("provision_instance", {"model": HUGE}, "model"),
    ("provision_instance", {"model": "../../etc/passwd"}, "model"),
    ("provision_instance", {"model": "org/name; rm -rf /"}, "model"),
    ("provision_instance", {"model": "/nonexistent/dir"}, "model"),
    ("provision_instance", {"model": "org/name", "ttl_hours": 0}, "ttl_hours"),
    ("provision_instance", {"model": "org/name", "ttl_hours": 10_000}, "ttl_hours"),
    ("provision_instance", {"model": "org/name", "ttl_hours": "1"}, "ttl_hours"),
    ("provision_instance", {"model": "org/name", "ttl": 3600}, "ttl"),
    ("provision_instance", {"model": "org/name", "gpu_type": "H100-80GB"}, "gpu_type"),
    ("provision_instance", {"model": "org/name", "gpu_type": "TPU"}, "gpu_type"),
    ("provision_instance", {"model": "org/name", "tier": "shared-huge"}, "tier"),
    ("provision_instance", {"model": "org/name", "tier": 1}, "tier"),
    ("provision_instance", {"model": "org/name", "wait": "yes"}, "wait"),
    ("provision_instance", {"model": "org/name", "idempotency_key": ""}, "idempotency_key"),
    ("quote_instance", {}, "model"),
    ("quote_instance", {"model": "org/name", "ttl_hours": -1}, "ttl_hours"),
    ("quote_instance", {"model": "org/name", "gpu_type": "A100-80GB"}, "gpu_type"),
    ("list_models", {"verbose": True}, "verbose"),
    ("get_instance", {}, "instance_id"),
    ("get_instance", {"instance_id": 7}, "instance_id"),
    ("get_instance", {"instance_id": "inst_" + "a" * 5000}, "instance_id"),
    ("get_instance", {"instance_id": "../instances"}, "instance_id"),
    ("get_instance", {"instance_id": "inst_doesnotexist"}, "instance_id"),
    ("list_instances", {"limit": 0}, "limit"),
    ("list_instances", {"limit": 101}, "limit"),
    ("list_instances", {"limit": "5"}, "limit"),
    ("list_instances", {"state": "exploded"}, "state"),
    ("destroy_instance", {}, "instance_id"),
    ("destroy_instance", {"instance_id": None}, "instance_id"),
    ("query_instance", {"prompt": "hi"}, "instance_id"),
    ("query_instance", {"instance_id": "inst_x", "max_tokens": 0, "prompt": "hi"}, "max_tokens"),
    (
        "query_instance",
        {"instance_id": "inst_x", "max_tokens": 10**6, "prompt": "hi"},
        "max_tokens",
    ),
    ("query_instance", {"instance_id": "inst_x", "temperature": 9, "prompt": "hi"}, "temperature"),
    ("query_instance", {"instance_id": "inst_x", "top_p": 0, "prompt": "hi"}, "top_p"),
    ("query_instance", {"instance_id": "inst_x", "stop": ["a"] * 5, "prompt": "hi"}, "stop"),
    ("query_instance", {"instance_id": "inst_x", "messages": []}, "messages"),
    ("query_instance", {"instance_id": "inst_x", "messages": "hello"}, "messages"),
    (
        "query_instance",
        {"instance_id": "inst_x", "messages": [{"role": "wizard", "content": "hi"}]},
        "messages.0.role",
    ),
    ("query_instance", {"instance_id": "inst_x", "prompt": ""}, "prompt"),
    (
        "query_instance",
        {"instance_id": "inst_x", "prompt": "hi", "conversation_id": "c1"},
        "conversation_id",
    ),
    (
        "query_instance",
        {"instance_id": "inst_x", "prompt": "hi", "conversation_id": 5},
        "conversation_id",
    ),
    ("provision_instance", {"model": "org/name", "history": "yes"}, "history"),
    ("get_conversation", {}, "conversation_id"),
    ("get_conversation", {"conversation_id": "conv_doesnotexist"}, "conversation_id"),
    ("delete_conversation", {"conversation_id": "../conv"}, "conversation_id"),
    ("list_conversations", {"instance_id": "inst_doesnotexist"}, "instance_id"),
    ("list_conversations", {"instance_id": "inst_x", "limit": 0}, "limit"),
    ("get_usage", {"since": "yesterday"}, "since"),
    ("get_usage", {"since": "2026-01-01T00:00:00"}, "since"),
    ("get_usage", {"instance_id": "'; DROP TABLE instance; --"}, "instance_id"),
]


@pytest.mark.parametrize(("tool", "args", "param"), BAD_CALLS)
def test_bad_arguments_are_tool_errors_that_change_nothing(
    world: World, tool: str, args: dict[str, Any], param: str
) -> None:
    before = world.snapshot()
    result = asyncio.run(call(world, tool, args))
    text = error_text(result)
    assert text.startswith(("invalid_argument", "not_found")), text
    assert f"[argument: {param}]" in text, text
    assert "Traceback" not in text and "validation error for" not in text, text
    assert HUGE not in text  # never echoes what it refused
    assert world.snapshot() == before


def test_query_needs_exactly_one_of_messages_and_prompt(world: World) -> None:
    for args in (
        {"instance_id": world.mine},
        {"instance_id": world.mine, "prompt": "hi", "messages": [{"role": "user", "content": "x"}]},
    ):
        text = error_text(asyncio.run(call(world, "query_instance", args)))
        assert "exactly one of messages (chat) or prompt" in text, text


def test_other_workspaces_instances_do_not_exist_for_me(world: World) -> None:
    before = world.snapshot()
    for tool, args in (
        ("get_instance", {"instance_id": world.theirs}),
        ("destroy_instance", {"instance_id": world.theirs}),
        ("query_instance", {"instance_id": world.theirs, "prompt": "hi"}),
    ):
        text = error_text(asyncio.run(call(world, tool, args)))
        assert text.startswith("not_found [argument: instance_id]"), text
    usage = structured(asyncio.run(call(world, "get_usage", {"instance_id": world.theirs})))
    assert usage["instances"] == [] and usage["requests"] == 0
    listed = structured(asyncio.run(call(world, "list_instances", {})))
    assert [i["id"] for i in listed["instances"]] == [world.mine]
    assert world.snapshot() == before


def test_query_on_an_instance_that_is_not_ready(world: World) -> None:
    text = error_text(
        asyncio.run(call(world, "query_instance", {"instance_id": world.mine, "prompt": "hi"}))
    )
    assert text.startswith("conflict [argument: instance_id]") and "not ready" in text, text


def test_oversized_query_is_refused_before_reaching_the_instance(world: World) -> None:
    before = world.snapshot()
    big = "y" * (MAX_BODY + 1)
    text = error_text(
        asyncio.run(call(world, "query_instance", {"instance_id": world.mine, "prompt": big}))
    )
    assert text.startswith("too_large [argument: prompt]"), text
    assert world.snapshot() == before


def test_quote_prices_without_creating_anything(world: World) -> None:
    before = world.snapshot()
    quote = structured(
        asyncio.run(call(world, "quote_instance", {"model": "org/name", "ttl_hours": 2}))
    )
    assert quote["gpu_type"] == "cpu" and quote["ttl_seconds"] == 7200
    assert quote["max_cost_micros"] == 0 and quote["provider"] == "local"
    catalog = structured(asyncio.run(call(world, "list_models", {})))
    assert {g["id"] for g in catalog["gpu_types"]} == {"cpu", "local-gpu"}
    assert catalog["tiers"] == ["dedicated", "shared-small"]
    assert world.snapshot() == before


def test_instance_keys_cannot_manage_instances(world: World) -> None:
    before = world.snapshot()
    for tool, args in (
        ("provision_instance", {"model": "org/name"}),
        ("list_instances", {}),
        ("destroy_instance", {"instance_id": world.mine}),
        ("get_usage", {}),
    ):
        text = error_text(asyncio.run(call(world, tool, args, key=world.instance_key)))
        assert text.startswith("permission_denied"), text
    assert world.snapshot() == before


def test_endpoint_requires_a_valid_key(world: World) -> None:
    url = f"{world.server.url}/mcp"
    body = INITIALIZE
    headers = {"Accept": "application/json, text/event-stream"}
    missing = httpx2.post(url, json=body, headers=headers)
    assert missing.status_code == 401
    challenge = missing.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and "error=" not in challenge
    assert f'resource_metadata="{world.server.url}/.well-known/oauth-protected-resource/mcp"' in (
        challenge
    )
    assert 'scope="instances:read instances:write inference kb"' in challenge
    for bad in ("nope", world.key[:-1] + ("A" if world.key[-1] != "A" else "B")):
        wrong = httpx2.post(url, json=body, headers={**headers, "Authorization": f"Bearer {bad}"})
        assert wrong.status_code == 401, wrong.text
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        assert wrong.json()["error"] == "invalid_token"


def test_foreign_origins_and_hosts_are_refused_before_auth(world: World) -> None:
    url = f"{world.server.url}/mcp"
    for headers, status in (
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "http://evil.example", "Authorization": f"Bearer {world.key}"}, 403),
        ({"Host": "evil.example"}, 421),
        ({"Host": "evil.example", "Authorization": f"Bearer {world.key}"}, 421),
    ):
        reply = httpx2.post(url, json={}, headers={"Content-Type": "application/json", **headers})
        assert reply.status_code == status, (headers, reply.status_code, reply.text)


def test_a_session_belongs_to_the_key_that_opened_it(world: World) -> None:
    url = f"{world.server.url}/mcp"
    headers = {
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {world.key}",
    }
    opened = httpx2.post(
        url,
        headers=headers,
        json=INITIALIZE,
    )
    assert opened.status_code == 200, opened.text
    session = opened.headers["mcp-session-id"]
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    session_headers = {**headers, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
    hijack = httpx2.post(
        url,
        json=listing,
        headers={**session_headers, "Authorization": f"Bearer {world.other_key}"},
    )
    assert hijack.status_code == 404, hijack.text
    own = httpx2.post(url, json=listing, headers=session_headers)
    assert own.status_code == 200 and "provision_instance" in own.text


def test_revoked_key_loses_access_at_once(world: World) -> None:
    http = world.server.client(world.key)
    made = http.post("/v1/keys", json={"name": "short-lived"}).json()

    async def flow() -> None:
        async with http_client(world.server.url, made["key"]) as client:
            assert not (await client.call_tool("list_instances", {})).is_error
            assert http.delete(f"/v1/keys/{made['id']}").status_code == 200
            with pytest.raises(Exception):  # noqa: B017 (the transport reports the 401)
                await client.call_tool("list_instances", {})

    asyncio.run(flow())


def test_mcp_json_entries_work_as_written(world: World) -> None:
    """The ready-to-paste client config at the repo root, with only the key and the
    server's address filled in."""
    entries = json.loads((REPO / "mcp.json").read_text())["mcpServers"]
    placeholder = "auxen_live_REPLACE_WITH_YOUR_KEY"
    default_url = "http://127.0.0.1:8000"
    stdio, remote = entries["auxen"], entries["auxen-remote"]

    async def flow() -> None:
        command = shutil.which(stdio["command"], path=str(Path(sys.executable).parent))
        assert command is not None
        env = {
            k: v.replace(placeholder, world.key).replace(default_url, world.server.url)
            for k, v in stdio["env"].items()
        }
        params = StdioServerParameters(
            command=command, args=stdio["args"], env={**world.server.env(), **env}
        )
        async with Client(params) as client:
            listed = await client.list_tools()
            assert "provision_instance" in {t.name for t in listed.tools}
        assert remote["type"] == "http"
        headers = {k: v.replace(placeholder, world.key) for k, v in remote["headers"].items()}
        http = httpx2.AsyncClient(headers=headers)
        url = remote["url"].replace(default_url, world.server.url)
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            mine = await client.call_tool("get_instance", {"instance_id": world.mine})
            assert structured(mine)["id"] == world.mine

    asyncio.run(flow())


def test_stdio_writes_nothing_but_json_rpc(tmp_path: Path) -> None:
    local = AuxenServer(tmp_path / "data", f"sqlite:///{tmp_path / 'auxen.db'}")
    key = local.init_workspace("stdio@example.com")
    command = [sys.executable, "-m", "auxen.cli.main", "mcp"]
    refused = subprocess.run(command, env=local.env(), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "AUXEN_API_KEY is not set" in refused.stderr
    wrong = subprocess.run(
        command,
        env={**local.env(), "AUXEN_API_KEY": key[:-2] + "zz"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2 and wrong.stdout == "" and "invalid API key" in wrong.stderr

    requests = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "get_usage"}},
        {
            "jsonrpc": "2.0",
            "id": 4,
            "method": "tools/call",
            "params": {"name": "get_instance", "arguments": {"instance_id": "inst_nope"}},
        },
    ]
    proc = subprocess.Popen(
        command,
        env={**local.env(), "AUXEN_API_KEY": key},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    for request in requests:
        proc.stdin.write(json.dumps(request) + "\n")
    proc.stdin.flush()
    answers: dict[int, dict[str, Any]] = {}
    while len(answers) < 4:
        line = proc.stdout.readline()
        assert line, "auxen mcp closed stdout early"
        message = json.loads(line)  # every line on stdout is a JSON-RPC message
        assert message["jsonrpc"] == "2.0"
        if "id" in message:
            answers[message["id"]] = message
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    assert proc.stdout.read() == ""
    assert answers[3]["result"]["structuredContent"]["requests"] == 0
    assert answers[4]["result"]["isError"] is True
    assert "not_found" in answers[4]["result"]["content"][0]["text"]


def test_waiting_for_an_instance_that_fails_reports_progress_then_the_failure(
    tmp_path: Path,
) -> None:
    """Through the stdio relay, so relayed progress is covered too."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    server = AuxenServer(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'auxen.db'}",
        extra_env={
            "AUXEN_VLLM_COMMAND": f"{sys.executable} -c 'import time; time.sleep(3600)'",
            "AUXEN_VLLM_READY_TIMEOUT_S": "8",
        },
    )
    key = server.init_workspace("waiter@example.com")
    server.start()
    events: list[tuple[float, str | None]] = []

    async def record(progress: float, total: float | None, message: str | None) -> None:
        events.append((progress, message))

    async def flow() -> Any:
        async with stdio_client(server, key, AUXEN_URL=server.url) as client:
            return await client.call_tool(
                "provision_instance",
                {"model": str(model_dir), "wait": True},
                progress_callback=record,
            )

    try:
        text = error_text(asyncio.run(flow()))
    finally:
        server.stop()
    assert text.startswith("failed: instance inst_") and "is failed after" in text, text
    assert "nothing is left running" in text
    assert len(events) >= 3, events  # state changes plus heartbeats while it starts
    assert [p for p, _ in events] == sorted(p for p, _ in events)
    assert any(" starting after " in (m or "") for _, m in events), events
    assert (events[-1][1] or "").split()[1] == "failed", events


def test_tool_arguments_and_errors_stay_out_of_the_server_log(world: World) -> None:
    marker = "/srv/secret-project-marker-4417"
    asyncio.run(call(world, "quote_instance", {"model": marker}))
    asyncio.run(call(world, "provision_instance", {"model": "org/name", marker[:60]: 1}))
    time.sleep(0.5)
    assert "secret-project-marker" not in world.server.log_path.read_text()


def test_one_key_cannot_hold_every_session(world: World) -> None:
    """32 sessions per key. A client that abandons its sessions (never sends DELETE) is
    not locked out: its least recently used idle session gives way. Only sessions all
    busy (a request or a stream open on each) refuse another, and other keys never wait."""
    url = f"{world.server.url}/mcp"
    http = world.server.client(world.key)
    made = http.post("/v1/keys", json={"name": "greedy"}).json()
    headers = {
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {made['key']}",
    }

    def open_session(key: str) -> httpx2.Response:
        return httpx2.post(
            url, json=INITIALIZE, headers={**headers, "Authorization": f"Bearer {key}"}
        )

    def ping(session: httpx2.Response) -> int:
        sid = {"Mcp-Session-Id": session.headers["mcp-session-id"]}
        body = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        protocol = {"MCP-Protocol-Version": "2025-11-25"}
        return httpx2.post(url, json=body, headers={**headers, **sid, **protocol}).status_code

    abandoned = [open_session(made["key"]) for _ in range(32)]
    assert all(r.status_code == 200 for r in abandoned)
    assert ping(abandoned[1]) == 200  # now the first one is the least recently used
    for _ in range(3):
        assert open_session(made["key"]).status_code == 200
    assert [ping(s) for s in abandoned[:4]] == [404, 200, 404, 404]

    async def all_busy() -> None:
        async with httpx2.AsyncClient(headers=headers, timeout=30) as client:
            sessions = [await client.post(url, json=INITIALIZE) for _ in range(32)]
            async with contextlib.AsyncExitStack() as streams:
                for session in sessions:
                    await streams.enter_async_context(
                        client.stream(
                            "GET",
                            url,
                            headers={
                                "Accept": "text/event-stream",
                                "Mcp-Session-Id": session.headers["mcp-session-id"],
                                "MCP-Protocol-Version": "2025-11-25",
                            },
                        )
                    )
                refused = await client.post(url, json=INITIALIZE)
                assert refused.status_code == 429 and "in progress" in refused.text
                other = await client.post(
                    url, json=INITIALIZE, headers={"Authorization": f"Bearer {world.key}"}
                )
                assert other.status_code == 200  # other keys are unaffected
            # Streams closed: the sessions are idle again and one gives way.
            assert (await client.post(url, json=INITIALIZE)).status_code == 200

    asyncio.run(all_busy())

    async def a_crowd_at_once() -> None:
        # 40 opened at once by a fresh key: whatever order they are answered in, no
        # more than 32 of its sessions are alive afterwards.
        crowd = http.post("/v1/keys", json={"name": "crowd"}).json()
        auth = {"Authorization": f"Bearer {crowd['key']}"}
        async with httpx2.AsyncClient(headers={**headers, **auth}, timeout=60) as client:
            answers = await asyncio.gather(*(client.post(url, json=INITIALIZE) for _ in range(40)))
            assert {r.status_code for r in answers} <= {200, 429}
            ids = [r.headers["mcp-session-id"] for r in answers if r.status_code == 200]
            alive = 0
            for sid in ids:
                ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
                session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
                alive += (await client.post(url, json=ping, headers=session)).status_code == 200
            assert 0 < alive <= 32, (alive, len(ids))
        http.delete(f"/v1/keys/{crowd['id']}")

    asyncio.run(a_crowd_at_once())
    http.delete(f"/v1/keys/{made['id']}")


def test_a_key_revoked_during_a_wait_ends_the_wait(world: World) -> None:
    http = world.server.client(world.key)
    made = http.post("/v1/keys", json={"name": "waiter"}).json()
    model_dir = world.server.data_dir.parent / "model"

    async def flow() -> Any:
        async def revoke_on_first_progress(
            progress: float, total: float | None, message: str | None
        ) -> None:
            if http.get("/v1/keys").status_code == 200 and progress > 1:
                http.delete(f"/v1/keys/{made['id']}")

        async with http_client(world.server.url, made["key"]) as client:
            return await client.call_tool(
                "provision_instance",
                {"model": str(model_dir), "wait": True},
                progress_callback=revoke_on_first_progress,
            )

    text = error_text(asyncio.run(flow()))
    assert text.startswith("unauthenticated") and "revoked" in text, text
    for instance in http.get("/v1/instances").json()["data"]:
        if instance["id"] not in (world.mine,):
            http.delete(f"/v1/instances/{instance['id']}")


def stateless_request(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """A 2026-07-28 request: no session, its protocol envelope in `_meta`."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return {"jsonrpc": "2.0", "id": 7, "method": method, "params": {**params, "_meta": meta}}


def raw_post(world: World, head_lines: list[str], body: bytes) -> tuple[int, bytes]:
    """POST /mcp with header lines sent exactly as given (no client library in between
    normalises them); the status and the body."""
    head = [
        "POST /mcp HTTP/1.1",
        f"Host: 127.0.0.1:{world.server.port}",
        f"Authorization: Bearer {world.key}",
        "Content-Type: application/json",
        "Accept: application/json, text/event-stream",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *head_lines,
    ]
    with socket.create_connection(("127.0.0.1", world.server.port), timeout=30) as sock:
        sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65_536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_header_values_do_not_include_surrounding_whitespace(world: World) -> None:
    # RFC 9110 section 5.5: `Mcp-Name:  list_models \t` names the tool list_models.
    body = json.dumps(stateless_request("tools/call", {"name": "list_models", "arguments": {}}))
    status, answer = raw_post(
        world,
        [
            "MCP-Protocol-Version: 2026-07-28 ",
            "Mcp-Method:\ttools/call\t",
            "Mcp-Name:  list_models \t",
        ],
        body.encode(),
    )
    assert status == 200, answer
    assert b'"error"' not in answer and b"-32020" not in answer, answer
    # A value that differs from the body's inside its text is still a mismatch.
    status, answer = raw_post(
        world,
        ["MCP-Protocol-Version: 2026-07-28", "Mcp-Method: tools/call", "Mcp-Name: list_ models"],
        body.encode(),
    )
    assert status == 400 and b"-32020" in answer, answer


def test_an_unknown_prompt_is_invalid_params_on_both_revisions(world: World) -> None:
    log_before = len(world.server.log_path.read_text())
    stateless = httpx2.post(
        f"{world.server.url}/mcp",
        json=stateless_request("prompts/get", {"name": "no_such_prompt"}),
        headers={
            "Authorization": f"Bearer {world.key}",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "prompts/get",
            "Mcp-Name": "no_such_prompt",
        },
    )
    error = stateless.json()["error"]
    assert error["code"] == -32602 and "no_such_prompt" in error["message"], error

    async def over_a_session() -> None:
        async with http_client(world.server.url, world.key) as client:
            with pytest.raises(MCPError) as raised:
                await client.get_prompt("no_such_prompt")
            assert raised.value.error.code == -32602

    asyncio.run(over_a_session())
    time.sleep(0.5)
    assert "Traceback" not in world.server.log_path.read_text()[log_before:]
