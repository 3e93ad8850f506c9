"""Zero retention, proven end to end: every journey (REST, the OpenAI SDK plain and
streamed, MCP over Streamable HTTP and over stdio, a knowledge base answering, and the
refusals of bad requests) carries one unique marker in its prompts; afterwards the
database, every log file and every instance directory are searched byte by byte. The
marker may appear only in the knowledge-base store, inside the document the user
uploaded (which contains it too). The instance keeps no history (the default), so no
conversation is stored at all; tests/test_history.py shows what an instance with
`history: true` keeps: sealed turns, gone with it."""

from __future__ import annotations

import os
import secrets
import shlex
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from mcp import Client, StdioServerParameters

from tests.mcp_clients import error_text, http_client, structured
from tests.servers import AuxenServer, wait_for_state

pytestmark = pytest.mark.vllm

MARKER = f"zr{secrets.token_hex(8)}mark"


class World:
    def __init__(self, root: Path, model: Path) -> None:
        self.root = root
        self.server = AuxenServer(root / "data", f"sqlite:///{root / 'data' / 'auxen.db'}")
        self.key = self.server.init_workspace("zr@example.com")
        self.server.start()
        self.model = str(model)
        self.http = self.server.client(self.key)
        self.instance: dict[str, Any] = {}
        self.stdio_log = root / "stdio-server.log"

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.instance["endpoint"], api_key=self.instance["instance_key"], max_retries=0
        )

    def places_with_marker(self) -> list[Path]:
        """Every file under the test's root (database, WAL, logs, instance directories,
        the vector store) whose bytes contain the marker."""
        needle = MARKER.encode()
        found = []
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                try:
                    if needle in path.read_bytes():
                        found.append(path)
                except OSError:
                    continue
        return found

    def assert_only_uploaded_documents_hold_the_marker(self) -> None:
        kb_store = self.server.data_dir / "kb"
        leaks = [p for p in self.places_with_marker() if not p.is_relative_to(kb_store)]
        assert leaks == [], f"the marker was retained in: {leaks}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("zero-retention"), tiny_model)
    try:
        made = w.http.post("/v1/instances", json={"model": w.model, "ttl": 3600})
        assert made.status_code == 202, made.text
        w.instance = made.json()
        ready = wait_for_state(w.http, w.instance["id"], {"ready", "failed"})
        assert ready["state"] == "ready", ready.get("last_error")
        yield w
    finally:
        if w.instance:
            w.http.delete(f"/v1/instances/{w.instance['id']}")
        w.server.stop()


def test_rest_and_the_openai_sdk(world: World) -> None:
    client = world.sdk()
    chat = client.chat.completions.create(
        model=world.model,
        messages=[{"role": "system", "content": f"You are {MARKER}."},
                  {"role": "user", "content": f"Repeat {MARKER} {MARKER}"}],
        max_tokens=8,
    )  # fmt: skip
    assert chat.usage is not None and chat.usage.completion_tokens > 0
    streamed = list(
        client.chat.completions.create(
            model=world.model,
            messages=[{"role": "user", "content": f"Stream {MARKER}"}],
            max_tokens=8,
            stream=True,
        )
    )
    assert streamed
    plain = client.completions.create(model=world.model, prompt=f"{MARKER} is", max_tokens=4)
    assert plain.usage is not None
    raw = httpx2.post(
        f"{world.instance['endpoint']}/chat/completions",
        json={"messages": [{"role": "user", "content": MARKER}], "max_tokens": 2,
              "extra_body": {"top_k": 2}},
        headers={"Authorization": f"Bearer {world.instance['instance_key']}"},
        timeout=120,
    )  # fmt: skip
    assert raw.status_code == 200, raw.text


def test_refused_requests_do_not_keep_what_they_carried(world: World) -> None:
    url = f"{world.instance['endpoint']}/chat/completions"
    auth = {"Authorization": f"Bearer {world.instance['instance_key']}"}
    for body, param in (
        ({"messages": [{"role": "user", "content": MARKER}], "api_key": MARKER}, "api_key"),
        ({"messages": [{"role": "user", "content": MARKER}], f"{MARKER}": 1}, MARKER),
        ({"messages": MARKER}, "messages"),
        ({"messages": [], "extra_body": {"cookie": MARKER}}, "extra_body.cookie"),
    ):
        reply = httpx2.post(url, json=body, headers=auth, timeout=60)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == param
    broken = httpx2.post(url, content=f'{{"messages": "{MARKER}'.encode(), headers=auth)
    assert broken.status_code == 400
    provision = world.http.post("/v1/instances", json={"model": MARKER, "gpu_type": MARKER})
    assert provision.status_code in (400, 404), provision.text


async def test_mcp_over_streamable_http_and_a_knowledge_base(world: World) -> None:
    async with http_client(world.server.url, world.key) as client:
        kb = structured(await client.call_tool("create_knowledge_base", {"name": "zr"}))
        structured(
            await client.call_tool(
                "add_documents",
                {
                    "knowledge_base_id": kb["id"],
                    "documents": [
                        {"title": "Notes", "text": f"The code word is {MARKER}. Keep it."},
                        {"title": "Other", "text": "Tomatoes like warm soil and water."},
                    ],
                },
            )
        )
        structured(
            await client.call_tool(
                "attach_knowledge_base",
                {"instance_id": world.instance["id"], "knowledge_base_id": kb["id"]},
            )
        )
        answer = structured(
            await client.call_tool(
                "query_instance",
                {
                    "instance_id": world.instance["id"],
                    "messages": [{"role": "user", "content": f"What is the code word {MARKER}?"}],
                    "max_tokens": 6,
                },
            )
        )
        assert answer["citations"], answer  # the document's text went to the model
        plain = structured(
            await client.call_tool(
                "query_instance",
                {"instance_id": world.instance["id"], "prompt": MARKER, "max_tokens": 3},
            )
        )
        assert plain["usage"]["prompt_tokens"] > 0
        refused = await client.call_tool(
            "query_instance",
            {"instance_id": world.instance["id"], "prompt": MARKER, "messages": MARKER},
        )
        assert "invalid_argument" in error_text(refused)
    # Streamed with retrieval, through the OpenAI-compatible endpoint.
    chunks = list(
        world.sdk().chat.completions.create(
            model=world.model,
            messages=[{"role": "user", "content": f"code word {MARKER}"}],
            max_tokens=4,
            stream=True,
        )
    )
    assert chunks


async def test_mcp_over_stdio(world: World) -> None:
    # `auxen mcp`, its stderr (where it logs) kept in a file the search covers.
    command = f"exec {shlex.quote(sys.executable)} -m auxen.cli.main mcp 2>>{world.stdio_log}"
    params = StdioServerParameters(
        command="sh",
        args=["-c", command],
        env={**world.server.env(), "AUXEN_API_KEY": world.key},
        cwd=os.getcwd(),
    )
    async with Client(params, read_timeout_seconds=600) as client:
        result = structured(
            await client.call_tool(
                "query_instance",
                {
                    "instance_id": world.instance["id"],
                    "messages": [{"role": "user", "content": f"stdio {MARKER}"}],
                    "max_tokens": 3,
                },
            )
        )
        assert result["usage"]["completion_tokens"] > 0
    assert world.stdio_log.exists()


def test_nothing_but_the_uploaded_document_holds_the_marker(world: World) -> None:
    time.sleep(0.5)  # the usage recorder flushes every 0.1 s
    rows = world.http.get("/v1/usage").json()
    assert rows, rows  # the calls were metered: counts only
    # The instance keeps no history (the default): no conversation, not even sealed.
    with sqlite3.connect(world.server.data_dir / "auxen.db") as conn:
        for table in ("conversation", "conversation_turn"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
    world.assert_only_uploaded_documents_hold_the_marker()
    kb_hits = world.places_with_marker()
    assert kb_hits, "the uploaded document should be in the vector store"
    # Destroyed: the instance's directory goes, and still nothing else holds the marker.
    gone = world.http.delete(f"/v1/instances/{world.instance['id']}").json()
    assert gone["state"] == "destroyed"
    world.instance = {}
    world.server.stop()
    world.assert_only_uploaded_documents_hold_the_marker()
    log = world.server.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
