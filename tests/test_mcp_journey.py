"""Journeys 1 and 2, on real vLLM processes, with the MCP Python SDK client: an agent
provisions (receiving progress notifications), queries, reads usage and destroys, over
Streamable HTTP (both protocol revisions), over stdio embedded on the local database,
and over stdio relaying to a remote server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.mcp_clients import error_text, http_client, stdio_client, structured
from tests.servers import AuxenServer

pytestmark = pytest.mark.vllm

MARKER = "ocelot-vesper-5519"  # a prompt marker that must never be stored


@dataclass
class World:
    server: AuxenServer
    key: str
    model: str
    instance: dict[str, Any] = field(default_factory=dict)
    instance_key: str = ""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("mcp-journey")
    server = AuxenServer(
        root / "data",
        f"sqlite:///{root / 'data' / 'auxen.db'}",
        extra_env={"AUXEN_MODELS_DIR": str(tiny_model.parent)},
    )
    key = server.init_workspace("agent@example.com")
    server.start()
    w = World(server, key, str(tiny_model))
    try:
        yield w
    finally:
        if w.instance:
            server.client(key).delete(f"/v1/instances/{w.instance['id']}")
        server.stop_clean()


class Progress:
    def __init__(self) -> None:
        self.events: list[tuple[float, float | None, str | None]] = []

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.events.append((progress, total, message))

    def check(self, instance_id: str) -> None:
        assert len(self.events) >= 2, self.events
        values = [p for p, _, _ in self.events]
        assert values == sorted(values) and len(set(values)) == len(values), values
        messages = [m or "" for _, _, m in self.events]
        assert all(instance_id in m for m in messages), messages
        assert messages[-1].startswith(f"{instance_id} ready after"), messages
        assert any(" provisioning " in m or " starting " in m for m in messages), messages


async def provision_and_query(client: Any, model: str, idempotency_key: str) -> dict[str, Any]:
    """The agent's path to a first answer; returns what provision_instance gave back."""
    quote = structured(await client.call_tool("quote_instance", {"model": model, "ttl_hours": 1}))
    assert quote["ttl_seconds"] == 3600 and quote["gpu_type"] == "cpu"
    progress = Progress()
    result = await client.call_tool(
        "provision_instance",
        {"model": model, "ttl_hours": 1, "wait": True, "idempotency_key": idempotency_key},
        progress_callback=progress,
    )
    made = structured(result)
    instance = made["instance"]
    assert instance["state"] == "ready", instance
    assert made["instance_key"].startswith("auxk_") and made["waited_seconds"] > 0
    assert made["idempotent_replay"] is False
    progress.check(instance["id"])
    answer = structured(
        await client.call_tool(
            "query_instance",
            {
                "instance_id": instance["id"],
                "messages": [{"role": "user", "content": f"say {MARKER}"}],
                "max_tokens": 6,
                "temperature": 0,
            },
        )
    )
    assert answer["instance_id"] == instance["id"] and isinstance(answer["text"], str)
    assert answer["usage"]["prompt_tokens"] > 0 and answer["usage"]["completion_tokens"] > 0
    assert answer["finish_reason"] in ("stop", "length")
    plain = structured(
        await client.call_tool(
            "query_instance",
            {"instance_id": instance["id"], "prompt": MARKER, "max_tokens": 3, "seed": 7},
        )
    )
    assert plain["usage"]["completion_tokens"] == 3 and plain["finish_reason"] == "length"
    return made


async def test_agent_over_streamable_http(world: World) -> None:
    async with http_client(world.server.url, world.key) as client:
        listed = await client.list_tools()
        by_name = {t.name: t for t in listed.tools}
        assert set(by_name) == {
            "list_models",
            "quote_instance",
            "provision_instance",
            "get_instance",
            "list_instances",
            "destroy_instance",
            "query_instance",
            "get_usage",
            "create_knowledge_base",
            "list_knowledge_bases",
            "delete_knowledge_base",
            "add_documents",
            "list_documents",
            "delete_document",
            "attach_knowledge_base",
            "detach_knowledge_base",
            "list_attachments",
            "search_knowledge_base",
            "get_balance",
            "set_spending_cap",
            "buy_credits",
            "list_members",
            "get_conversation",
            "list_conversations",
            "delete_conversation",
        }
        for tool in listed.tools:
            assert tool.description and tool.output_schema and tool.annotations
            assert tool.input_schema.get("additionalProperties") is False
        assert by_name["destroy_instance"].annotations.destructive_hint is True  # type: ignore[union-attr]
        assert by_name["get_usage"].annotations.read_only_hint is True  # type: ignore[union-attr]

        catalog = structured(await client.call_tool("list_models", {}))
        assert catalog["provider"] == "local"
        assert world.model in [m["model"] for m in catalog["models"]]

        made = await provision_and_query(client, world.model, "mcp-http")
        world.instance, world.instance_key = made["instance"], made["instance_key"]

        # A retry with the same idempotency key is the same instance, not a second bill.
        again = structured(
            await client.call_tool(
                "provision_instance",
                {"model": world.model, "ttl_hours": 1, "idempotency_key": "mcp-http"},
            )
        )
        assert again["instance"]["id"] == world.instance["id"] and again["idempotent_replay"]
        # The retry (whose first answer may have been lost) carries the same, working key.
        assert again["instance_key"] == world.instance_key

        usage = structured(
            await client.call_tool("get_usage", {"instance_id": world.instance["id"]})
        )
        assert usage["requests"] == 2
        assert usage["completion_tokens"] >= 4 and usage["prompt_tokens"] > 0
        assert usage["instances"][0]["state"] == "ready"
        assert usage["gpu_seconds"] > 0


async def test_the_instance_key_works_with_the_openai_sdk(world: World) -> None:
    sdk = openai.AsyncOpenAI(
        base_url=world.instance["endpoint"], api_key=world.instance_key, max_retries=0
    )
    chat = await sdk.chat.completions.create(
        model=world.model, messages=[{"role": "user", "content": MARKER}], max_tokens=2
    )
    assert chat.usage is not None and chat.usage.completion_tokens == 2


async def test_stateless_revision_reaches_the_same_instance(world: World) -> None:
    async with http_client(world.server.url, world.key, mode="2026-07-28") as client:
        got = structured(
            await client.call_tool("get_instance", {"instance_id": world.instance["id"]})
        )
        assert got["state"] == "ready"
        answer = structured(
            await client.call_tool(
                "query_instance",
                {"instance_id": world.instance["id"], "prompt": MARKER, "max_tokens": 2},
            )
        )
        assert answer["usage"]["completion_tokens"] == 2


async def test_stdio_relays_to_a_remote_server(world: World) -> None:
    async with stdio_client(world.server, world.key, AUXEN_URL=world.server.url) as client:
        listed = structured(await client.call_tool("list_instances", {"state": "ready"}))
        assert [i["id"] for i in listed["instances"]] == [world.instance["id"]]
        answer = structured(
            await client.call_tool(
                "query_instance",
                {"instance_id": world.instance["id"], "prompt": MARKER, "max_tokens": 2},
            )
        )
        assert answer["usage"]["completion_tokens"] == 2
        text = error_text(await client.call_tool("get_instance", {"instance_id": "inst_nope"}))
        assert text.startswith("not_found [argument: instance_id]")


async def test_destroy_is_final_and_idempotent(world: World) -> None:
    instance_id = world.instance["id"]
    async with http_client(world.server.url, world.key) as client:
        gone = structured(await client.call_tool("destroy_instance", {"instance_id": instance_id}))
        assert gone["state"] == "destroyed" and gone["destroy_reason"]
        again = structured(await client.call_tool("destroy_instance", {"instance_id": instance_id}))
        assert again["state"] == "destroyed" and again["destroyed_at"] == gone["destroyed_at"]
        text = error_text(
            await client.call_tool("query_instance", {"instance_id": instance_id, "prompt": "x"})
        )
        assert text.startswith("conflict") and "provision a new instance" in text
        usage = structured(await client.call_tool("get_usage", {"instance_id": instance_id}))
        assert usage["instances"][0]["state"] == "destroyed"
        assert usage["requests"] == 5  # 2 (HTTP) + 1 (OpenAI SDK) + 1 (stateless) + 1 (relay)
    assert not (world.server.data_dir / "instances" / instance_id).exists()
    # Zero retention: the marker is nowhere in the database files or the server log.
    for path in world.server.data_dir.glob("auxen.db*"):
        assert MARKER.encode() not in path.read_bytes(), path
    assert MARKER not in world.server.log_path.read_text()


async def test_agent_over_stdio_embedded(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> None:
    """`auxen mcp` with only AUXEN_API_KEY runs the tools itself on the local database."""
    root = tmp_path_factory.mktemp("mcp-stdio")
    local = AuxenServer(root / "data", f"sqlite:///{root / 'data' / 'auxen.db'}")
    key = local.init_workspace("local@example.com")
    async with stdio_client(local, key) as client:
        made = await provision_and_query(client, str(tiny_model), "mcp-stdio")
        instance_id = made["instance"]["id"]
        usage = structured(await client.call_tool("get_usage", {}))
        assert usage["requests"] == 2 and usage["instances"][0]["instance_id"] == instance_id
        gone = structured(await client.call_tool("destroy_instance", {"instance_id": instance_id}))
        assert gone["state"] == "destroyed"
    assert not (local.data_dir / "instances" / instance_id).exists()
    for path in local.data_dir.glob("auxen.db*"):
        assert MARKER.encode() not in path.read_bytes(), path
