"""Hostile but well-formed input against a real `auxen serve`: bodies built to make
checks slow, bodies too large to read, JSON nested past any sense and NUL characters.
Each is refused with a 4xx JSON error that says why (or served), never a 500, and one
caller's body never holds up the other callers. Runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.servers import AuxenServer, instant_env, wait_for_state


@dataclass
class World:
    server: AuxenServer
    key: str
    instance: str
    models: Path

    def http(self) -> httpx2.Client:
        return self.server.client(self.key)


@pytest.fixture(scope="module")
def world(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("hostile")
    models = root / "models"
    (models / "tiny").mkdir(parents=True)
    (models / "tiny" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    server = AuxenServer(
        root / "data", database_url, {**instant_env(), "AUXEN_MODELS_DIR": str(models)}
    ).start()
    try:
        _, key = server.workspace("hostile@example.com", usd="5")
        with server.client(key) as http:
            made = http.post("/v1/instances", json={"model": str(models / "tiny")})
            assert made.status_code == 202, made.text
            ready = wait_for_state(http, made.json()["id"], {"ready", "failed"}, timeout=120)
            assert ready["state"] == "ready", ready["last_error"]
        yield World(server, key, made.json()["id"], models)
    finally:
        server.stop_clean()


def test_backtracking_bodies_do_not_hold_up_other_callers(world: World) -> None:
    """Megabyte bodies made of what once made the credential scan quadratic (a long word:
    minutes per body) are scanned off the event loop in linear time: /health keeps
    answering while they are in flight, and each is answered (refused for its unknown
    field, which is checked after the whole body has been scanned)."""
    bodies = [
        json.dumps({"messages": [{"role": "user", "content": text}], "not_a_field": 1})
        for text in ["a" * 1_000_000, "a://" * 250_000, "auxk_-" * 160_000] * 2
    ]
    answers: list[tuple[int, str | None]] = []

    def send(body: str) -> None:
        with world.http() as http:
            reply = http.post(
                f"/v1/instances/{world.instance}/chat/completions",
                content=body,
                headers={"Content-Type": "application/json"},
            )
        answers.append((reply.status_code, reply.json()["error"]["param"]))

    threads = [threading.Thread(target=send, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    health_while_pending = 0
    with world.server.client(None) as other:
        while any(thread.is_alive() for thread in threads):
            assert other.get("/health").status_code == 200
            if any(thread.is_alive() for thread in threads):
                health_while_pending += 1
    for thread in threads:
        thread.join()
    assert answers == [(400, "not_a_field")] * len(bodies)
    assert health_while_pending > 0


def _raw_post(world: World, path: str, head: dict[str, str], chunks: Iterator[bytes]) -> bytes:
    """POST over a plain socket: the headers as given, then each chunk as it comes (the
    body is never finished when `chunks` stops early); the raw response."""
    with socket.create_connection(("127.0.0.1", world.server.port), timeout=60) as sock:
        lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{world.server.port}"]
        lines += [f"{name}: {value}" for name, value in head.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while the body was still coming
        reply = b""
        while b"\r\n\r\n" not in reply or not _complete(reply):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
        return reply


def _complete(reply: bytes) -> bool:
    head, _, body = reply.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def _status_and_json(reply: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


BODY_ENDPOINTS = [
    ("/v1/stripe/webhook", "application/json", False),
    ("/register", "application/json", False),
    ("/token", "application/x-www-form-urlencoded", False),
    ("/revoke", "application/x-www-form-urlencoded", False),
    ("/authorize", "application/x-www-form-urlencoded", False),
    ("/login", "application/x-www-form-urlencoded", False),
    ("/oauth/consent", "application/x-www-form-urlencoded", False),
    ("/v1/keys", "application/json", True),
    ("/v1/knowledge-bases", "application/json", True),
    ("/mcp", "application/json", True),
]


@pytest.mark.parametrize(("path", "content_type", "keyed"), BODY_ENDPOINTS)
def test_a_chunked_body_is_refused_while_it_arrives(
    world: World, path: str, content_type: str, keyed: bool
) -> None:
    """A chunked body that never ends is answered 413 (JSON) once it passes the route's
    limit: nothing waits for the end of a body it would refuse anyway."""
    head = {"Content-Type": content_type, "Transfer-Encoding": "chunked"}
    if keyed:
        head["Authorization"] = f"Bearer {world.key}"
    if path == "/mcp":
        head["Accept"] = "application/json, text/event-stream"
    chunk = b"a" * 65_536
    framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    # Past every limit (the largest is the knowledge-base upload's), then silence.
    reply = _raw_post(world, path, head, iter([framed] * (16 * 1024 * 1024 // len(chunk))))
    status, body = _status_and_json(reply)
    assert status == 413, reply[:500]
    assert body["error"]["code"] == "too_large" and "larger than" in body["error"]["message"]


@pytest.mark.parametrize(("path", "content_type", "keyed"), BODY_ENDPOINTS)
def test_a_declared_oversized_body_is_refused_before_it_is_read(
    world: World, path: str, content_type: str, keyed: bool
) -> None:
    head = {"Content-Type": content_type, "Content-Length": str(300 * 1024 * 1024)}
    if keyed:
        head["Authorization"] = f"Bearer {world.key}"
    if path == "/mcp":
        head["Accept"] = "application/json, text/event-stream"
    status, body = _status_and_json(_raw_post(world, path, head, iter([b"{"])))
    assert status == 413 and body["error"]["code"] == "too_large"


def _deep(levels: int) -> list[str]:
    """A list, an object and an object holding a list, each `levels` deep."""
    return [
        "[" * levels + "]" * levels,
        '{"a":' * levels + "1" + "}" * levels,
        '{"messages": ' + "[" * levels + "]" * levels + "}",
    ]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/keys",
        "/v1/instances",
        "/v1/knowledge-bases",
        "/v1/caps",
        "/v1/instances/{instance}/chat/completions",
        "/v1/instances/{instance}/query",
        "/register",
        "/mcp",
    ],
)
def test_json_nested_past_any_sense_is_a_4xx_naming_the_problem(world: World, path: str) -> None:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    with world.http() as http:
        # 100,000 levels; 2,500 where the route's body limit (16 KiB) would refuse that.
        for text in _deep(2_500 if path == "/register" else 100_000):
            reply = http.post(path.format(instance=world.instance), content=text, headers=headers)
            assert 400 <= reply.status_code < 500, (path, reply.status_code, reply.text[:300])
            assert "nested" in reply.text, reply.text[:300]


def test_nul_characters_are_a_4xx_naming_the_field(world: World) -> None:
    """PostgreSQL cannot store NUL; SQLite can. Both refuse it alike, naming the field,
    and nothing is stored."""
    with world.http() as http:
        cases = [
            ("/v1/keys", {"name": "a\x00b"}, "name"),
            ("/v1/knowledge-bases", {"name": "kb\x00"}, "name"),
            ("/v1/instances", {"model": "org/m", "idempotency_key": "k\x00"}, "idempotency_key"),
            ("/v1/knowledge-bases", {"name": "kb", "n\x00": 1}, "n\\u0000"),
        ]
        keys = len(http.get("/v1/keys").json()["data"])
        kbs = len(http.get("/v1/knowledge-bases").json()["data"])
        for path, body, param in cases:
            reply = http.post(path, json=body)
            assert reply.status_code == 400, (path, reply.text)
            assert reply.json()["error"]["param"] == param, reply.text
            assert "NUL" in reply.json()["error"]["message"]
        assert len(http.get("/v1/keys").json()["data"]) == keys
        assert len(http.get("/v1/knowledge-bases").json()["data"]) == kbs
        # Forms reach the database another way; the same check stands before it.
        page = world.server.client(None).post(
            "/login", data={"email": "x\x00@example.com", "password": "p"}
        )
        assert page.status_code < 500, page.text[:300]
        # MCP: the one parser refuses it before any tool runs.
        reply = http.post(
            "/mcp",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "create_knowledge_base", "arguments": {"name": "a\x00"}},
            },
            headers={"Accept": "application/json, text/event-stream"},
        )
        assert reply.status_code == 400 and "NUL" in reply.text, reply.text
        assert reply.json()["error"]["data"]["param"] == "params.arguments.name"


def test_local_models_outside_the_models_directory_are_refused_alike(
    world: World, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (world.models / "escape").symlink_to(outside)
    messages = set()
    with world.http() as http:
        for model in [str(outside), str(world.models / "escape"), str(tmp_path / "missing")]:
            reply = http.post("/v1/instances", json={"model": model})
            assert reply.status_code == 400, reply.text
            assert reply.json()["error"]["param"] == "model"
            messages.add(reply.json()["error"]["message"].replace(repr(model), "<model>"))
    assert len(messages) == 1 and str(tmp_path) not in messages.pop()
