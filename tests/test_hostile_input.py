"""Hostile but well-formed input against a real `auxen serve`: bodies built to make
checks slow, bodies too large to read, JSON nested past any sense and NUL characters.
Each is refused with a 4xx JSON error that says why (or served), never a 500, and one
caller's body never holds up the other callers. Runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
