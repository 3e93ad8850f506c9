"""Fair use of inference: a key at its limit is refused with 429, `Retry-After` and
OpenAI's `x-ratelimit-*` headers, on the OpenAI-compatible endpoint and on
`query_instance` alike, while another workspace keeps being served. Counted, never
timed. (The concurrency arithmetic is in tests/test_fairness_units.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.servers import AuxenServer, instant_env, wait_for_state

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuxenServer]:
    root = tmp_path_factory.mktemp("fairness")
    models = root / "models"
    (models / "tiny").mkdir(parents=True)
    (models / "tiny" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    env = {
        **instant_env(),
        "AUXEN_MODELS_DIR": str(models),
        "AUXEN_INFERENCE_KEY_RPM": "8",
        "AUXEN_INFERENCE_WORKSPACE_RPM": "100",
    }
    server = AuxenServer(root / "data", f"sqlite:///{root / 'auxen.db'}", env).start()
    try:
        yield server
    finally:
        server.stop_clean()


def _instance(server: AuxenServer, email: str) -> tuple[httpx2.Client, str]:
    _, key = server.workspace(email, usd="5")
    http = server.client(key)
    model = Path(server.env()["AUXEN_MODELS_DIR"]) / "tiny"
    made = http.post("/v1/instances", json={"model": str(model)})
    assert made.status_code == 202, made.text
    ready = wait_for_state(http, made.json()["id"], {"ready", "failed"}, timeout=120)
    assert ready["state"] == "ready", ready["last_error"]
    return http, made.json()["id"]


def test_a_limited_key_gets_429_while_other_workspaces_are_served(server: AuxenServer) -> None:
    a, a_id = _instance(server, "a@example.com")
    b, b_id = _instance(server, "b@example.com")
    try:
        # A spends its key's eight requests a minute (one more comes back every 7.5 s, so
        # the count allows a slow machine a few), then is refused.
        served = 0
        reply = a.post(f"/v1/instances/{a_id}/chat/completions", json=CHAT)
        while reply.status_code == 200 and served < 20:
            served += 1
            assert reply.headers["x-ratelimit-limit-requests"] == "8"
            assert int(reply.headers["x-ratelimit-remaining-requests"]) >= 0
            reply = a.post(f"/v1/instances/{a_id}/chat/completions", json=CHAT)
        assert 8 <= served < 20, served
        assert reply.status_code == 429, reply.text
        assert reply.json()["error"]["type"] == "rate_limit_error"
        assert int(reply.headers["retry-after"]) >= 1
        assert reply.headers["x-ratelimit-remaining-requests"] == "0"
        assert reply.headers["x-ratelimit-reset-requests"].endswith("s")
        # query_instance, the operation REST and MCP both call, is held to the same limit.
        asked = a.post(f"/v1/instances/{a_id}/query", json={"prompt": "hi", "max_tokens": 1})
        assert asked.status_code == 429, asked.text
        assert int(asked.headers["retry-after"]) >= 1
        # Meanwhile B, another workspace, is served every time.
        for _ in range(5):
            assert b.post(f"/v1/instances/{b_id}/chat/completions", json=CHAT).status_code == 200
    finally:
        a.close()
        b.close()
