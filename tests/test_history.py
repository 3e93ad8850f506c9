"""Conversation history on real vLLM (one shared server carries every instance here: the
shared-small tier's logical instances, each with its own keys and conversations).

An instance provisioned with history keeps each exchange sealed and sends it with the
next query of the conversation, bounded to the newest turns; another instance or
workspace never sees it; destroying the instance leaves neither rows nor bytes on disk.
An instance without history keeps nothing at all, and neither does the
OpenAI-compatible endpoint, even of an instance with history."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.ledger_checks import sql
from tests.mcp_clients import error_text, http_client, structured
from tests.servers import AuxenServer, wait_for_state

pytestmark = pytest.mark.vllm

MARKS = ["heron-quartz-3141", "lynx-basalt-2718", "okapi-marble-1618", "tapir-slate-1414"]
STATELESS = "ibis-granite-5772"  # sent only where nothing may be kept


@dataclass
class World:
    server: AuxenServer
    root: Path
    model: str
    keys: dict[str, str] = field(default_factory=dict)
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    conversations: dict[str, str] = field(default_factory=dict)

    def http(self, workspace: str) -> httpx2.Client:
        return self.server.client(self.keys[workspace])

    def sql(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        return sql(self.server.database_url, query, **params)

    def disk(self) -> bytes:
        """Every byte the control plane keeps on disk: its database (with its write-ahead
        log) and data directory, and its log."""
        blobs = [self.server.log_path.read_bytes()]
        for path in self.root.rglob("*"):
            if path.is_file() and "instances" not in path.parts and "models" not in path.parts:
                blobs.append(path.read_bytes())
        return b"".join(blobs)


def provision(world: World, workspace: str, history: bool) -> dict[str, Any]:
    http = world.http(workspace)
    made = http.post(
        "/v1/instances",
        json={"model": world.model, "tier": "shared-small", "history": history},
    )
    assert made.status_code == 202, made.text
    assert made.json()["history"] is history
    ready = wait_for_state(http, made.json()["id"], {"ready", "failed"})
    assert ready["state"] == "ready", ready["last_error"]
    return {**ready, "instance_key": made.json()["instance_key"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("history")
    prices = root / "prices.toml"
    prices.write_text('[shared_small]\ninput_usd_per_million = "1"\noutput_usd_per_million = "1"\n')
    server = AuxenServer(
        root / "data",
        f"sqlite:///{root / 'data' / 'auxen.db'}",
        extra_env={"AUXEN_PRICES_FILE": str(prices), "AUXEN_HISTORY_MAX_TURNS": "3"},
    )
    w = World(server, root / "data", str(tiny_model))
    w.keys["one"] = server.workspace("one@history.example", usd="5")[1]
    w.keys["two"] = server.workspace("two@history.example", usd="5")[1]
    server.start()
    try:
        w.instances["a"] = provision(w, "one", history=True)
        w.instances["b"] = provision(w, "one", history=True)
        w.instances["c"] = provision(w, "one", history=False)
        w.instances["d"] = provision(w, "two", history=True)
        yield w
    finally:
        log = server.stop_clean()
        for mark in [*MARKS, STATELESS]:
            assert mark not in log
        # The shared server outlives a clean shutdown (see test_shared_tier).
        for state in (root / "data" / "instances").glob("*/provider.json"):
            with contextlib.suppress(ProcessLookupError, ValueError, KeyError):
                os.killpg(int(json.loads(state.read_text())["pid"]), signal.SIGKILL)


def ask(
    instance: dict[str, Any], content: str, conversation_id: str | None = None
) -> dict[str, Any]:
    args: dict[str, Any] = {
        "instance_id": instance["id"],
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 4,
        "temperature": 0,
    }
    if conversation_id is not None:
        args["conversation_id"] = conversation_id
    return args


def test_a_conversation_continues_and_is_kept_sealed(world: World) -> None:
    a = world.instances["a"]
    conversation = asyncio.run(_continue_a_conversation(world, a))
    world.conversations["a"] = conversation
    # Sealed at rest: the database holds ciphertext, never the text.
    sealed = world.sql(
        "SELECT sealed FROM conversation_turn WHERE conversation_id = :c", c=conversation
    )
    assert len(sealed) == 2 and all(len(s) > 40 for (s,) in sealed)
    disk = world.disk()
    assert all(mark.encode() not in disk for mark in MARKS[:2])


async def _continue_a_conversation(world: World, a: dict[str, Any]) -> str:
    async with http_client(world.server.url, world.keys["one"]) as client:
        first_args = ask(a, f"remember {MARKS[0]}")
        first_args["messages"].insert(0, {"role": "system", "content": "Answer briefly."})
        first = structured(await client.call_tool("query_instance", first_args))
        conversation = first["conversation_id"]
        assert conversation.startswith("conv_") and len(conversation) == 25
        second = structured(
            await client.call_tool("query_instance", ask(a, MARKS[1], conversation))
        )
        assert second["conversation_id"] == conversation
        alone = structured(await client.call_tool("query_instance", ask(a, MARKS[1])))
        assert alone["conversation_id"] not in (None, conversation)  # a new one
        # The model was sent the earlier exchange too.
        assert second["usage"]["prompt_tokens"] > alone["usage"]["prompt_tokens"] + 4

        kept = structured(
            await client.call_tool("get_conversation", {"conversation_id": conversation})
        )
        assert [m["role"] for m in kept["messages"]] == ["user", "assistant"] * 2
        assert kept["messages"][0]["content"] == f"remember {MARKS[0]}"  # no system message
        assert kept["messages"][1]["content"] == first["text"]
        assert kept["turns"] == 2 and kept["instance_id"] == a["id"]
        listed = structured(await client.call_tool("list_conversations", {"instance_id": a["id"]}))
        assert {c["id"] for c in listed["conversations"]} == {
            conversation,
            alone["conversation_id"],
        }
        assert all(c["messages"] is None for c in listed["conversations"])
    return str(conversation)


def test_a_conversation_keeps_only_its_newest_turns(world: World) -> None:
    a, conversation = world.instances["a"], world.conversations["a"]

    async def go() -> dict[str, Any]:
        async with http_client(world.server.url, world.keys["one"]) as client:
            for mark in MARKS[2:]:
                await client.call_tool("query_instance", ask(a, mark, conversation))
            return structured(
                await client.call_tool("get_conversation", {"conversation_id": conversation})
            )

    kept = asyncio.run(go())
    assert kept["turns"] == 3  # AUXEN_HISTORY_MAX_TURNS
    users = [m["content"] for m in kept["messages"] if m["role"] == "user"]
    assert users == [MARKS[1], MARKS[2], MARKS[3]]
    assert world.sql(
        "SELECT COUNT(*) FROM conversation_turn WHERE conversation_id = :c", c=conversation
    ) == [(3,)]


def test_a_conversation_is_invisible_to_other_instances_and_workspaces(world: World) -> None:
    asyncio.run(_other_instances_and_workspaces_see_nothing(world))
    conversation = world.conversations["a"]
    other = world.http("two")
    assert other.get(f"/v1/conversations/{conversation}").status_code == 404
    assert other.delete(f"/v1/conversations/{conversation}").status_code == 404
    assert world.http("one").get(f"/v1/conversations/{conversation}").status_code == 200


async def _other_instances_and_workspaces_see_nothing(world: World) -> None:
    conversation = world.conversations["a"]
    b, d = world.instances["b"], world.instances["d"]
    async with http_client(world.server.url, world.keys["one"]) as client:
        crossed = await client.call_tool("query_instance", ask(b, "hi", conversation))
        assert error_text(crossed).startswith("not_found [argument: conversation_id]")
    async with http_client(world.server.url, world.keys["two"]) as client:
        for call in (
            client.call_tool("get_conversation", {"conversation_id": conversation}),
            client.call_tool("delete_conversation", {"conversation_id": conversation}),
            client.call_tool("query_instance", ask(d, "hi", conversation)),
        ):
            assert error_text(await call).startswith("not_found [argument: conversation_id]")
        listed = await client.call_tool(
            "list_conversations", {"instance_id": world.instances["a"]["id"]}
        )
        assert error_text(listed).startswith("not_found [argument: instance_id]")


def test_without_history_nothing_of_a_conversation_is_kept(world: World) -> None:
    c, a = world.instances["c"], world.instances["a"]
    http = world.http("one")
    refused = http.post(
        f"/v1/instances/{c['id']}/query",
        json=ask(c, "hi", world.conversations["a"]),
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "conversation_id"
    answered = http.post(
        f"/v1/instances/{c['id']}/query",
        json={"messages": [{"role": "user", "content": STATELESS}], "max_tokens": 3},
    )
    assert answered.status_code == 200, answered.text
    assert answered.json()["conversation_id"] is None
    # The OpenAI-compatible endpoint is stateless, even for an instance with history.
    before = world.sql("SELECT COUNT(*) FROM conversation_turn")
    proxied = httpx2.post(
        f"{world.server.url}/v1/instances/{a['id']}/chat/completions",
        headers={"Authorization": f"Bearer {a['instance_key']}"},
        json={"model": a["model"], "max_tokens": 3,
              "messages": [{"role": "user", "content": STATELESS}]},
        timeout=120,
    )  # fmt: skip
    assert proxied.status_code == 200, proxied.text
    assert world.sql("SELECT COUNT(*) FROM conversation_turn") == before
    assert world.sql("SELECT COUNT(*) FROM conversation WHERE instance_id = :i", i=c["id"]) == [
        (0,)
    ]
    assert STATELESS.encode() not in world.disk()


def test_a_conversation_can_be_deleted(world: World) -> None:
    b = world.instances["b"]
    http = world.http("one")
    made = http.post(f"/v1/instances/{b['id']}/query", json=ask(b, "short-lived"))
    assert made.status_code == 200, made.text
    conversation = made.json()["conversation_id"]
    listed = http.get(f"/v1/instances/{b['id']}/conversations").json()["data"]
    assert [c["id"] for c in listed] == [conversation]
    gone = http.delete(f"/v1/conversations/{conversation}")
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    assert http.get(f"/v1/conversations/{conversation}").status_code == 404
    assert world.sql(
        "SELECT COUNT(*) FROM conversation_turn WHERE conversation_id = :c", c=conversation
    ) == [(0,)]


def test_destroying_the_instance_deletes_its_conversations_from_disk(world: World) -> None:
    a, d = world.instances["a"], world.instances["d"]
    kept_elsewhere = world.http("two").post(f"/v1/instances/{d['id']}/query", json=ask(d, "stays"))
    assert kept_elsewhere.status_code == 200
    sealed = [
        bytes(s)
        for (s,) in world.sql(
            "SELECT t.sealed FROM conversation_turn t JOIN conversation c "
            "ON c.id = t.conversation_id WHERE c.instance_id = :i",
            i=a["id"],
        )
    ]
    assert len(sealed) >= 4
    assert all(s[:40] in world.disk() for s in sealed)  # the check below can fail

    destroyed = world.http("one").delete(f"/v1/instances/{a['id']}")
    assert destroyed.status_code == 200 and destroyed.json()["state"] == "destroyed"

    assert world.sql("SELECT COUNT(*) FROM conversation WHERE instance_id = :i", i=a["id"]) == [
        (0,)
    ]
    assert world.sql(
        "SELECT COUNT(*) FROM conversation_turn WHERE conversation_id = :c",
        c=world.conversations["a"],
    ) == [(0,)]
    disk = world.disk()
    assert not any(s[:40] in disk for s in sealed)  # no copy in free pages or the WAL
    assert world.http("one").get(f"/v1/conversations/{world.conversations['a']}").status_code == 404
    # Another workspace's conversation is untouched.
    other = kept_elsewhere.json()["conversation_id"]
    assert world.http("two").get(f"/v1/conversations/{other}").json()["turns"] == 1
