"""Knowledge bases over REST and MCP on a real `auxen serve` (real LanceDB, real
MiniLM embeddings): uploads of every supported type, idempotent re-uploads, search,
attach and detach, bad input that changes nothing, workspace isolation, and zero
retention of document text outside the knowledge-base store.

Instances here run a process that never becomes ready (not vLLM): attaching needs a
live instance, not an answering one. Answers with citations are in test_kb_journey.py.
"""

from __future__ import annotations

import base64
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.mcp_clients import error_text, http_client, structured
from tests.pdfs import make_pdf
from tests.servers import AuxenServer, wait_for_state

MARKER = "quokka-lantern-4821"  # document text that must stay in the knowledge-base store
MAX_DOC = 200_000

HANDBOOK = f"""# Expense policy

Travel expenses are reimbursed within 30 days when the receipt is uploaded to the
finance portal. Meals while travelling are covered up to 60 euros per day. {MARKER}

# Security

Laptops must use full-disk encryption. Lost devices are reported to the security desk
within one hour.
"""
GARDEN_HTML = """<html><head><title>x</title><style>p {color: red}</style></head><body>
<h1>Tomato care</h1><p>Water tomato plants deeply twice a week and stake them when they
reach knee height.</p><script>var secret = 1;</script></body></html>"""
PDF_LINES = ["Orbital mechanics primer", "A geostationary satellite orbits at about",
             "35786 kilometres above the equator, matching the rotation of the Earth."]  # fmt: skip


@dataclass
class World:
    server: AuxenServer
    key: str  # workspace A
    other_key: str  # workspace B
    mine: str  # A's instance (starting, never ready)
    theirs: str  # B's instance

    def http(self, key: str | None = None) -> httpx2.Client:
        return self.server.client(key or self.key)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.server.data_dir / "auxen.db") as conn:
            return conn.execute(sql).fetchall()

    def workspace_of(self, key: str) -> str:
        key_id = key.split("_")[2][:16]
        return str(self.rows(f"SELECT workspace_id FROM api_key WHERE id = '{key_id}'")[0][0])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("kb-api")
    model_dir = root / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    server = AuxenServer(
        root / "data",
        f"sqlite:///{root / 'data' / 'auxen.db'}",
        extra_env={
            "AUXEN_VLLM_COMMAND": f"{sys.executable} -c 'import time; time.sleep(3600)'",
            "AUXEN_KB_MAX_DOCUMENT_BYTES": str(MAX_DOC),
        },
    )
    key = server.init_workspace("a@example.com")
    other_key = server.init_workspace("b@example.com")
    server.start()
    made = {}
    for name, k in (("mine", key), ("theirs", other_key)):
        reply = server.client(k).post("/v1/instances", json={"model": str(model_dir)})
        assert reply.status_code == 202, reply.text
        made[name] = reply.json()["id"]
        wait_for_state(server.client(k), made[name], {"starting"}, timeout=30)
    try:
        yield World(server, key, other_key, made["mine"], made["theirs"])
    finally:
        for name, k in (("mine", key), ("theirs", other_key)):
            server.client(k).delete(f"/v1/instances/{made[name]}")
        server.stop()
        log = server.log_path.read_text()
        assert "Traceback" not in log, log[-3000:]


def create_kb(world: World, name: str, key: str | None = None) -> dict[str, Any]:
    reply = world.http(key).post("/v1/knowledge-bases", json={"name": name})
    assert reply.status_code == 201, reply.text
    body: dict[str, Any] = reply.json()
    return body


def upload(world: World, kb_id: str, files: list[tuple[str, bytes, str]]) -> httpx2.Response:
    return world.http().post(
        f"/v1/knowledge-bases/{kb_id}/documents",
        files=[("file", (name, data, kind)) for name, data, kind in files],
    )


def search(world: World, kb_id: str, query: str, key: str | None = None) -> httpx2.Response:
    return world.http(key).post(
        f"/v1/knowledge-bases/{kb_id}/search", json={"query": query, "top_k": 3}
    )


def test_upload_every_type_then_search_finds_the_right_document(world: World) -> None:
    kb = create_kb(world, "handbook")
    assert kb["id"].startswith("kb_") and kb["documents"] == 0
    assert kb["embedding_model"] == "all-MiniLM-L6-v2"
    again = world.http().post("/v1/knowledge-bases", json={"name": "handbook"})
    assert again.status_code == 409 and again.json()["error"]["param"] == "name"

    pdf = make_pdf([PDF_LINES])
    reply = upload(
        world,
        kb["id"],
        [
            ("handbook.md", HANDBOOK.encode(), "text/markdown"),
            ("garden.html", GARDEN_HTML.encode(), "text/html"),
            ("orbits.pdf", pdf, "application/pdf"),
        ],
    )
    assert reply.status_code == 201, reply.text
    docs = reply.json()["data"]
    assert [d["title"] for d in docs] == ["handbook.md", "garden.html", "orbits.pdf"]
    assert all(d["status"] == "ready" and d["chunks"] >= 1 for d in docs)
    assert not any(d["duplicate"] for d in docs)
    assert docs[0]["chunks"] == 2  # one chunk per section of the Markdown
    by_title = {d["title"]: d["id"] for d in docs}

    # The same bytes again: the same document, nothing added.
    dup = upload(world, kb["id"], [("copy.pdf", pdf, "application/pdf")])
    assert dup.status_code == 200 and dup.json()["data"][0]["duplicate"] is True
    assert dup.json()["data"][0]["id"] == by_title["orbits.pdf"]
    listed = world.http().get(f"/v1/knowledge-bases/{kb['id']}/documents").json()["data"]
    assert len(listed) == 3
    assert world.http().get(f"/v1/knowledge-bases/{kb['id']}").json()["documents"] == 3

    for question, title in (
        ("how high above the equator do geostationary satellites orbit?", "orbits.pdf"),
        ("when should I stake my tomatoes?", "garden.html"),
        ("what is the daily limit for meals on a business trip?", "handbook.md"),
    ):
        hits = search(world, kb["id"], question).json()["data"]
        assert hits[0]["document_id"] == by_title[title], (question, hits)
        assert hits[0]["source"] == 1 and hits[0]["title"] == title and hits[0]["score"] > 0
    html_hit = search(world, kb["id"], "tomato watering").json()["data"][0]
    assert "secret" not in html_hit["text"] and html_hit["text"].startswith("# Tomato care")

    # Deleting a document takes its chunks out of search.
    gone = world.http().delete(
        f"/v1/knowledge-bases/{kb['id']}/documents/{by_title['garden.html']}"
    )
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    hits = search(world, kb["id"], "when should I stake my tomatoes?").json()["data"]
    assert by_title["garden.html"] not in {h["document_id"] for h in hits}


async def test_agent_manages_knowledge_bases_over_mcp(world: World) -> None:
    async with http_client(world.server.url, world.key) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        kb_tools = {
            "create_knowledge_base", "list_knowledge_bases", "delete_knowledge_base",
            "add_documents", "list_documents", "delete_document", "attach_knowledge_base",
            "detach_knowledge_base", "list_attachments", "search_knowledge_base",
        }  # fmt: skip
        assert kb_tools <= set(tools)
        for name in kb_tools:
            assert tools[name].output_schema and tools[name].annotations
            assert (tools[name].meta or {}).get("auxen/scope") == "kb"
        assert tools["delete_knowledge_base"].annotations.destructive_hint is True  # type: ignore[union-attr]
        assert "retrieval" in tools["query_instance"].input_schema["properties"]

        kb = structured(await client.call_tool("create_knowledge_base", {"name": "agent notes"}))
        added = structured(
            await client.call_tool(
                "add_documents",
                {
                    "knowledge_base_id": kb["id"],
                    "documents": [
                        {"title": "Kettle", "text": "Descale the kettle monthly with vinegar."},
                        {
                            "title": "Orbits",
                            "content_base64": base64.b64encode(make_pdf([PDF_LINES])).decode(),
                            "content_type": "application/pdf",
                        },
                    ],
                },
            )
        )
        assert [d["document"]["title"] for d in added["documents"]] == ["Kettle", "Orbits"]
        found = structured(
            await client.call_tool(
                "search_knowledge_base",
                {"knowledge_base_id": kb["id"], "query": "how to descale a kettle", "top_k": 1},
            )
        )
        assert [p["title"] for p in found["passages"]] == ["Kettle"]
        assert "vinegar" in found["passages"][0]["text"]

        attached = structured(
            await client.call_tool(
                "attach_knowledge_base", {"instance_id": world.mine, "knowledge_base_id": kb["id"]}
            )
        )
        assert attached["attached"] is True
        twice = structured(
            await client.call_tool(
                "attach_knowledge_base", {"instance_id": world.mine, "knowledge_base_id": kb["id"]}
            )
        )
        assert twice["created_at"] == attached["created_at"]
        listed = structured(await client.call_tool("list_attachments", {"instance_id": world.mine}))
        assert [a["knowledge_base_id"] for a in listed["attachments"]] == [kb["id"]]
        detached = structured(
            await client.call_tool(
                "detach_knowledge_base", {"instance_id": world.mine, "knowledge_base_id": kb["id"]}
            )
        )
        assert detached["attached"] is False
        text = error_text(
            await client.call_tool(
                "detach_knowledge_base", {"instance_id": world.mine, "knowledge_base_id": kb["id"]}
            )
        )
        assert text.startswith("not_found [argument: knowledge_base_id]")
        deleted = structured(
            await client.call_tool("delete_knowledge_base", {"knowledge_base_id": kb["id"]})
        )
        assert deleted["id"] == kb["id"]
        workspace = world.workspace_of(world.key)
        assert not (world.server.data_dir / "kb" / workspace / f"{kb['id']}.lance").exists()


def documents_state(world: World) -> list[tuple[Any, ...]]:
    return world.rows(
        "SELECT id, knowledge_base_id, status, chunk_count FROM kb_document ORDER BY id"
    )


async def test_bad_documents_are_refused_and_change_nothing(world: World) -> None:
    kb = create_kb(world, "strict")
    ok = ("ok.txt", b"A perfectly fine document about lighthouses.", "text/plain")
    before = documents_state(world)
    cases: list[tuple[list[tuple[str, bytes, str]], int, str, str]] = [
        ([("empty.txt", b"", "text/plain")], 400, "documents.0.content", "empty"),
        ([("blank.md", b"  \n\n ", "text/markdown")], 400, "documents.0.content", "no text"),
        ([ok, ("big.txt", b"a " * MAX_DOC, "text/plain")], 413, "documents.1.content", "limit"),
        ([ok, ("bad.pdf", b"%PDF-1.4\n garbage", "application/pdf")], 400, "documents.1.content", "damaged"),  # noqa: E501
        ([("cut.pdf", make_pdf([PDF_LINES])[:-200], "application/pdf")], 400, "documents.0.content", "PDF"),  # noqa: E501
        ([("not.pdf", b"plain words", "application/pdf")], 400, "documents.0.content", "not a PDF"),
        ([("image.png", b"\x89PNG\r\n", "image/png")], 400, "documents.0.content_type", "text/plain, text/markdown"),  # noqa: E501
        ([("latin1.txt", "caf\xe9".encode("latin-1"), "text/plain")], 400, "documents.0.content", "UTF-8"),  # noqa: E501
        ([("blank.pdf", make_pdf([[]]), "application/pdf")], 400, "documents.0.content", "no extractable text"),  # noqa: E501
    ]  # fmt: skip
    for files, status, param, words in cases:
        reply = upload(world, kb["id"], files)
        assert reply.status_code == status, (files[-1][0], reply.text)
        error = reply.json()["error"]
        assert error["param"] == param and words in error["message"], (files[-1][0], error)
    assert documents_state(world) == before

    json_cases: list[tuple[dict[str, Any], str]] = [
        ({"documents": []}, "documents"),
        ({"documents": [{"title": "t"}]}, "give exactly one of text or content_base64"),
        ({"documents": [{"title": "t", "text": "x", "content_base64": "eA=="}]}, "exactly one"),
        ({"documents": [{"title": "t", "content_base64": "%%%"}]}, "base64"),
        ({"documents": [{"title": "", "text": "x"}]}, "documents.0.title"),
        ({"documents": [{"title": "t", "text": "x", "colour": "red"}]}, "colour"),
    ]
    for body, words in json_cases:
        reply = world.http().post(f"/v1/knowledge-bases/{kb['id']}/documents", json=body)
        assert reply.status_code == 400, (body, reply.text)
        error = reply.json()["error"]
        assert words in error["message"] or words == error["param"], (body, error)
    assert (
        world.http()
        .post(
            f"/v1/knowledge-bases/{kb['id']}/documents",
            content=b"x",
            headers={"content-type": "text/plain"},
        )
        .status_code
        == 400
    )
    for query, param in (({"query": ""}, "query"), ({"query": "x", "top_k": 0}, "top_k"),
                         ({"query": "x" * 4001}, "query"), ({"query": "x", "k": 1}, "k")):  # fmt: skip  # noqa: E501
        reply = world.http().post(f"/v1/knowledge-bases/{kb['id']}/search", json=query)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
    assert documents_state(world) == before

    async with http_client(world.server.url, world.key) as client:
        for args, param in (
            ({"knowledge_base_id": kb["id"], "documents": [{"title": "t", "text": 5}]}, "documents.0.text"),  # noqa: E501
            ({"knowledge_base_id": kb["id"], "documents": [{"title": "t", "content_base64": "eA==", "content_type": "image/gif"}]}, "documents.0.content_type"),  # noqa: E501
            ({"knowledge_base_id": "kb_nope", "documents": [{"title": "t", "text": "x"}]}, "knowledge_base_id"),  # noqa: E501
            ({"knowledge_base_id": "inst_x", "documents": [{"title": "t", "text": "x"}]}, "knowledge_base_id"),  # noqa: E501
        ):  # fmt: skip
            text = error_text(await client.call_tool("add_documents", args))
            assert f"[argument: {param}]" in text, text
        text = error_text(
            await client.call_tool(
                "search_knowledge_base", {"knowledge_base_id": kb["id"], "query": "x", "top_k": 21}
            )
        )
        assert "[argument: top_k]" in text
    assert documents_state(world) == before


def test_attaching_to_a_destroyed_instance_is_a_conflict(world: World, tmp_path: Path) -> None:
    kb = create_kb(world, "for the dead")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    made = world.http().post("/v1/instances", json={"model": str(model_dir)}).json()
    world.http().post(
        f"/v1/instances/{made['id']}/knowledge-bases", json={"knowledge_base_id": kb["id"]}
    )
    assert world.rows(f"SELECT count(*) FROM kb_attachment WHERE instance_id = '{made['id']}'") == [
        (1,)
    ]
    assert world.http().delete(f"/v1/instances/{made['id']}").json()["state"] == "destroyed"
    # Destroying deleted the instance's attachments; the knowledge base stays.
    assert world.rows(f"SELECT count(*) FROM kb_attachment WHERE instance_id = '{made['id']}'") == [
        (0,)
    ]
    assert world.http().get(f"/v1/knowledge-bases/{kb['id']}").status_code == 200
    reply = world.http().post(
        f"/v1/instances/{made['id']}/knowledge-bases", json={"knowledge_base_id": kb["id"]}
    )
    assert reply.status_code == 409 and reply.json()["error"]["param"] == "instance_id"
    assert "destroyed" in reply.json()["error"]["message"]


async def test_other_workspaces_cannot_see_or_touch_a_knowledge_base(world: World) -> None:
    kb = create_kb(world, "private")
    upload(
        world,
        kb["id"],
        [("secret.txt", b"The vault code is kept in the blue binder.", "text/plain")],
    )
    doc = world.http().get(f"/v1/knowledge-bases/{kb['id']}/documents").json()["data"][0]
    theirs = world.http(world.other_key)
    guessed = "kb_" + "A" * 20

    assert theirs.get("/v1/knowledge-bases").json()["data"] == []
    for kb_id in (kb["id"], guessed):  # a real id of A reads exactly like a made-up one
        replies = [
            theirs.get(f"/v1/knowledge-bases/{kb_id}"),
            theirs.get(f"/v1/knowledge-bases/{kb_id}/documents"),
            theirs.post(f"/v1/knowledge-bases/{kb_id}/search", json={"query": "vault code"}),
            theirs.post(f"/v1/knowledge-bases/{kb_id}/documents", json={"documents": [{"title": "t", "text": "x"}]}),  # noqa: E501
            theirs.delete(f"/v1/knowledge-bases/{kb_id}/documents/{doc['id']}"),
            theirs.delete(f"/v1/knowledge-bases/{kb_id}"),
            theirs.post(f"/v1/instances/{world.theirs}/knowledge-bases", json={"knowledge_base_id": kb_id}),  # noqa: E501
        ]  # fmt: skip
        for reply in replies:
            assert reply.status_code == 404, reply.text
            message = reply.json()["error"]["message"]
            assert message.replace(kb_id, "KB") in (
                "no knowledge base KB",
                f"no document {doc['id']} in knowledge base KB",
            ), message
    # A cannot attach to B's instance either.
    reply = world.http().post(
        f"/v1/instances/{world.theirs}/knowledge-bases", json={"knowledge_base_id": kb["id"]}
    )
    assert reply.status_code == 404 and reply.json()["error"]["param"] == "instance_id"
    async with http_client(world.server.url, world.other_key) as client:
        listed = structured(await client.call_tool("list_knowledge_bases", {}))
        assert listed["knowledge_bases"] == []
        for tool, args in (
            ("search_knowledge_base", {"knowledge_base_id": kb["id"], "query": "vault"}),
            ("list_documents", {"knowledge_base_id": kb["id"]}),
            ("attach_knowledge_base", {"instance_id": world.theirs, "knowledge_base_id": kb["id"]}),
            ("delete_knowledge_base", {"knowledge_base_id": kb["id"]}),
        ):
            text = error_text(await client.call_tool(tool, args))
            assert text == f"not_found [argument: knowledge_base_id]: no knowledge base {kb['id']}"
    # A's chunks live under A's own namespace; B's holds none of them.
    root = world.server.data_dir / "kb"
    assert (root / world.workspace_of(world.key) / f"{kb['id']}.lance").is_dir()
    theirs_dir = root / world.workspace_of(world.other_key)
    assert not theirs_dir.exists() or not list(theirs_dir.glob(f"{kb['id']}*"))
    assert search(world, kb["id"], "vault code").json()["data"][0]["document_id"] == doc["id"]


def test_document_text_stays_out_of_the_database_and_logs(world: World) -> None:
    kb = create_kb(world, "retention")
    reply = upload(world, kb["id"], [("policy.md", HANDBOOK.encode(), "text/markdown")])
    assert reply.status_code in (200, 201)
    hits = search(world, kb["id"], f"meals {MARKER}").json()["data"]
    assert MARKER in hits[0]["text"]  # the store has it, and gives it back...
    for path in world.server.data_dir.glob("auxen.db*"):
        assert MARKER.encode() not in path.read_bytes(), path  # ...and nothing else keeps it
    assert MARKER not in world.server.log_path.read_text()
    assert "Expense policy" not in world.server.log_path.read_text()
