"""The knowledge-base journey on a real local vLLM instance, as an agent over MCP and as
code with the OpenAI SDK: create a knowledge base, add documents, attach it, ask, get
citations pointing at the right document (and none when retrieval is off), detach, ask
again without citations, destroy the instance: its retrieval data (the attachment) is
gone while the knowledge base remains."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.mcp_clients import http_client, structured
from tests.servers import AuxenServer

pytestmark = pytest.mark.vllm

MARKER = "heron-basalt-3307"  # document text that must stay in the knowledge-base store
DOCUMENTS = [
    {
        "title": "Orbits",
        "text": "A geostationary satellite orbits about 35786 kilometres above the "
        "equator, so it stays over one spot of the Earth.",
    },
    {
        "title": "Kettles",
        "text": f"Descale an electric kettle once a month with white vinegar. {MARKER}",
    },
    {
        "title": "Tomatoes",
        "text": "Water tomato plants deeply twice a week and stake them at knee height.",
    },
]
QUESTION = "How high above the equator does a geostationary satellite orbit?"


@dataclass
class World:
    server: AuxenServer
    key: str
    model: str
    instance: dict[str, Any] = field(default_factory=dict)
    instance_key: str = ""
    kb: dict[str, Any] = field(default_factory=dict)
    docs: dict[str, str] = field(default_factory=dict)  # title -> document id

    def attachments(self) -> int:
        with sqlite3.connect(self.server.data_dir / "auxen.db") as conn:
            sql = "SELECT count(*) FROM kb_attachment WHERE instance_id = ?"
            return int(conn.execute(sql, (self.instance["id"],)).fetchone()[0])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("kb-journey")
    server = AuxenServer(root / "data", f"sqlite:///{root / 'data' / 'auxen.db'}")
    key = server.init_workspace("kb@example.com")
    server.start()
    w = World(server, key, str(tiny_model))
    try:
        yield w
    finally:
        if w.instance:
            server.client(key).delete(f"/v1/instances/{w.instance['id']}")
        server.stop()
        log = server.log_path.read_text()
        assert "Traceback" not in log, log[-3000:]


async def ask(client: Any, world: World, **extra: Any) -> dict[str, Any]:
    args = {
        "instance_id": world.instance["id"],
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 3,
        "temperature": 0,
        **extra,
    }
    return structured(await client.call_tool("query_instance", args))


async def test_agent_attaches_a_knowledge_base_and_gets_citations(world: World) -> None:
    async with http_client(world.server.url, world.key) as client:
        made = structured(
            await client.call_tool(
                "provision_instance", {"model": world.model, "ttl_hours": 1, "wait": True}
            )
        )
        world.instance, world.instance_key = made["instance"], made["instance_key"]
        assert world.instance["state"] == "ready"
        plain = await ask(client, world)
        assert plain["citations"] == []  # nothing attached yet

        world.kb = structured(await client.call_tool("create_knowledge_base", {"name": "facts"}))
        added = structured(
            await client.call_tool(
                "add_documents", {"knowledge_base_id": world.kb["id"], "documents": DOCUMENTS}
            )
        )
        world.docs = {d["document"]["title"]: d["document"]["id"] for d in added["documents"]}
        structured(
            await client.call_tool(
                "attach_knowledge_base",
                {"instance_id": world.instance["id"], "knowledge_base_id": world.kb["id"]},
            )
        )

        answer = await ask(client, world)
        citations = answer["citations"]
        assert citations and citations[0]["document_id"] == world.docs["Orbits"], citations
        assert citations[0] == {
            "source": 1,
            "knowledge_base_id": world.kb["id"],
            "document_id": world.docs["Orbits"],
            "title": "Orbits",
            "chunk": 0,
            "score": citations[0]["score"],
            "similarity": citations[0]["similarity"],
        }
        assert [c["source"] for c in citations] == list(range(1, len(citations) + 1))
        # The sources went to the model: the prompt grew by them.
        assert answer["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 20

        top1 = await ask(client, world, top_k=1)
        assert [c["title"] for c in top1["citations"]] == ["Orbits"]
        off = await ask(client, world, retrieval=False)
        assert off["citations"] == []
        assert off["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]

        prompt = structured(
            await client.call_tool(
                "query_instance",
                {"instance_id": world.instance["id"], "prompt": QUESTION, "max_tokens": 2},
            )
        )
        assert prompt["citations"][0]["document_id"] == world.docs["Orbits"]


async def test_the_chat_endpoint_cites_too_with_the_openai_sdk(world: World) -> None:
    sdk = openai.AsyncOpenAI(
        base_url=world.instance["endpoint"], api_key=world.instance_key, max_retries=0
    )
    messages: Any = [{"role": "user", "content": QUESTION}]
    chat = await sdk.chat.completions.create(model=world.model, messages=messages, max_tokens=2)
    cited = (chat.model_extra or {})["citations"]
    assert cited[0]["document_id"] == world.docs["Orbits"] and cited[0]["source"] == 1

    stream = await sdk.chat.completions.create(
        model=world.model, messages=messages, max_tokens=2, stream=True
    )
    chunks = [chunk async for chunk in stream]
    first = chunks[0].model_extra or {}
    assert first["citations"][0]["document_id"] == world.docs["Orbits"]
    assert all("citations" not in (c.model_extra or {}) for c in chunks[1:])

    off = await sdk.chat.completions.create(
        model=world.model,
        messages=messages,
        max_tokens=2,
        extra_body={"retrieval": {"enabled": False}},
    )
    assert "citations" not in (off.model_extra or {})
    top1 = await sdk.chat.completions.create(
        model=world.model, messages=messages, max_tokens=2, extra_body={"retrieval": {"top_k": 1}}
    )
    assert len((top1.model_extra or {})["citations"]) == 1
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.chat.completions.create(
            model=world.model, messages=messages, max_tokens=2, extra_body={"retrieval": "yes"}
        )
    assert bad.value.param == "retrieval"  # type: ignore[attr-defined]


async def test_detach_then_destroy_leaves_the_knowledge_base(world: World) -> None:
    async with http_client(world.server.url, world.key) as client:
        args = {"instance_id": world.instance["id"], "knowledge_base_id": world.kb["id"]}
        structured(await client.call_tool("detach_knowledge_base", args))
        assert world.attachments() == 0
        assert (await ask(client, world))["citations"] == []

        structured(await client.call_tool("attach_knowledge_base", args))
        assert world.attachments() == 1
        gone = structured(
            await client.call_tool("destroy_instance", {"instance_id": world.instance["id"]})
        )
        assert gone["state"] == "destroyed"
        assert world.attachments() == 0  # the instance's retrieval data is gone...
        kbs = structured(await client.call_tool("list_knowledge_bases", {}))["knowledge_bases"]
        assert [(k["id"], k["documents"]) for k in kbs] == [(world.kb["id"], 3)]  # ...the KB is not
        found = structured(
            await client.call_tool(
                "search_knowledge_base", {"knowledge_base_id": world.kb["id"], "query": QUESTION}
            )
        )
        assert found["passages"][0]["title"] == "Orbits"
    for path in world.server.data_dir.glob("auxen.db*"):
        assert MARKER.encode() not in path.read_bytes(), path
    assert MARKER not in world.server.log_path.read_text()
