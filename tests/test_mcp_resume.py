"""A dropped MCP stream resumes: a `provision_instance` wait whose connection breaks
part way picks up with `Last-Event-ID` and gets every progress report it missed and
then the result (2025-11-25 sessions; the SSE wire is read as bytes here, so the
priming event and the `retry:` field are checked as a client sees them)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.mcp_clients import INITIALIZE
from tests.servers import AuxenServer, instant_env

STARTUP_S = 14  # long enough for heartbeats (every 5 s) while the client is away


def sse_events(response: httpx2.Response) -> Iterator[dict[str, str]]:
    """Server-sent events as field -> value (`data` lines joined)."""
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if event:
                yield event
            event = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        event[name] = event[name] + "\n" + value if name == "data" and name in event else value
    if event:
        yield event


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AuxenServer, str, Path]]:
    root = tmp_path_factory.mktemp("mcp-resume")
    model = root / "models" / "slow"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    env = instant_env(INSTANT_VLLM_STARTUP_DELAY_S=str(STARTUP_S))
    server = AuxenServer(root / "data", f"sqlite:///{root / 'auxen.db'}", env)
    key = server.init_workspace("resume@example.com", usd="5")
    server.start()
    try:
        yield server, key, model
    finally:
        with server.client(key) as http:
            for instance in http.get("/v1/instances").json()["data"]:
                http.delete(f"/v1/instances/{instance['id']}")
        server.stop_clean()


def test_a_dropped_wait_resumes_with_every_progress_report_and_the_result(
    server: tuple[AuxenServer, str, Path],
) -> None:
    auxen, key, model = server
    url = f"{auxen.url}/mcp"
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
    with httpx2.Client(headers=headers, timeout=httpx2.Timeout(30.0, read=120.0)) as http:
        opened = http.post(url, json=INITIALIZE)
        session = {
            "Mcp-Session-Id": opened.headers["mcp-session-id"],
            "MCP-Protocol-Version": "2025-11-25",
        }
        http.post(
            url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session
        )
        call: dict[str, Any] = {
            "jsonrpc": "2.0",
            "id": 41,
            "method": "tools/call",
            "params": {
                "name": "provision_instance",
                "arguments": {"model": str(model), "wait": True},
                "_meta": {"progressToken": "p1"},
            },
        }
        before: list[dict[str, str]] = []
        started = time.monotonic()
        with http.stream("POST", url, json=call, headers=session) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for event in sse_events(stream):
                before.append(event)
                if len(before) == 2:
                    break  # the connection drops after the first progress report
        priming, first = before
        assert priming["id"] and priming.get("data", "") == "" and int(priming["retry"]) > 0
        assert json.loads(first["data"])["method"] == "notifications/progress"

        time.sleep(7)  # away long enough to miss a heartbeat (one every 5 s)
        away_for = time.monotonic() - started
        after: list[tuple[int, dict[str, Any]]] = []
        with http.stream(
            "GET",
            url,
            headers={**session, "Accept": "text/event-stream", "Last-Event-ID": first["id"]},
        ) as resumed:
            assert resumed.status_code == 200
            for event in sse_events(resumed):
                if event.get("data"):
                    after.append((int(event["id"]), json.loads(event["data"])))
                    if after[-1][1].get("id") == 41:
                        break
    progress = [
        m["params"]["progress"] for _, m in after if m.get("method") == "notifications/progress"
    ]
    result = after[-1][1]
    assert result["result"]["structuredContent"]["instance"]["state"] == "ready", result
    # Reports made while the client was away come back first, then the live ones.
    assert any(p < away_for - 1 for p in progress), (away_for, progress)
    values = [json.loads(first["data"])["params"]["progress"], *progress]
    assert values == sorted(values) and len(set(values)) == len(values)
    ids = [int(first["id"])] + [i for i, _ in after]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
