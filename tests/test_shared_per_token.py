"""Per-token holds bound generation (issue 17, item 1): on the shared tier a request's
hold covers everything it can make the upstream generate (prompts x max(n, best_of) x
the token limit vLLM honours, and its prompt), the body that reaches the upstream says
that limit in every field vLLM reads, each call is charged exactly what was generated,
and a body whose bound cannot be computed is refused naming the field, before anything
is reserved or sent. Over the OpenAI-compatible endpoint (chat and completions,
streamed and not), REST `query` and MCP `query_instance`; the instant upstream counts
tokens as vLLM bounds them and records every body it gets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.ledger_checks import settled_exactly, sql
from tests.mcp_clients import http_client, structured
from tests.servers import (
    AuxenServer,
    instant_env,
    kill_instance_processes,
    shared_small_setup,
    wait_for_state,
)

PER_TOKEN = 100  # micro-dollars per token, in and out ($100 per million)


@dataclass
class Tier:
    server: AuxenServer
    record: Path
    ws: str
    key: str
    instance: dict[str, Any]

    def sql(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        return sql(self.server.database_url, query, **params)

    def bodies(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line)["body"] for line in self.record.read_text().splitlines()]

    def post(self, path: str, body: dict[str, Any]) -> httpx2.Response:
        """POST to the instance's OpenAI-compatible endpoint with its auxk_ key (a stream
        is read to its end)."""
        url = f"{self.server.url}/v1/instances/{self.instance['id']}/{path}"
        headers = {"Authorization": f"Bearer {self.instance['instance_key']}"}
        with httpx2.stream("POST", url, headers=headers, json=body, timeout=60) as reply:
            reply.read()
            return reply

    def last_call(self) -> tuple[int, int]:
        """(reserved, charged) of the latest call, once every hold is settled."""
        still_open = settled_exactly(self.server.database_url, self.ws, wait_s=20)
        assert not any(still_open)
        ((reserved, charged),) = self.sql(
            "SELECT r.amount_micros, COALESCE(SUM(CASE WHEN l.kind = 'charge' "
            "THEN l.amount_micros END), 0) FROM reservation r LEFT JOIN ledger_entry l "
            "ON l.reservation_id = r.id WHERE r.workspace_id = :w GROUP BY r.id, "
            "r.amount_micros, r.created_at ORDER BY r.created_at DESC LIMIT 1",
            w=self.ws,
        )
        return int(reserved), int(charged)


@pytest.fixture(scope="module")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    root = tmp_path_factory.mktemp("bounds")
    models, prices = shared_small_setup(root)
    record = root / "upstream.jsonl"
    server = AuxenServer(
        root / "data",
        f"sqlite:///{root / 'auxen.db'}",
        {
            **instant_env(INSTANT_VLLM_RECORD=str(record)),
            "AUXEN_MODELS_DIR": str(models),
            "AUXEN_PRICES_FILE": str(prices),
        },
    ).start()
    try:
        ws, key = server.workspace("bounds@example.com", usd="20")
        with server.client(key) as http:
            made = http.post(
                "/v1/instances", json={"model": str(models / "tiny"), "tier": "shared-small"}
            )
            assert made.status_code == 202, made.text
            ready = wait_for_state(http, made.json()["id"], {"ready", "failed"}, timeout=120)
            assert ready["state"] == "ready", ready["last_error"]
        yield Tier(server, record, ws, key, {**ready, "instance_key": made.json()["instance_key"]})
    finally:
        server.stop_clean()
        kill_instance_processes(root / "data")


def usage_of(reply: httpx2.Response) -> dict[str, int]:
    """The usage the upstream reported (the usage chunk of a stream)."""
    if reply.headers["content-type"].startswith("text/event-stream"):
        for line in reply.text.splitlines():
            if line.startswith("data: {") and '"usage"' in line:
                usage = json.loads(line[6:]).get("usage")
                if usage:
                    return dict(usage)
        raise AssertionError(reply.text[-500:])
    return dict(reply.json()["usage"])


def charged_exactly(tier: Tier, usage: dict[str, int]) -> tuple[int, int]:
    """The latest call's hold covered what it generated and it was charged exactly that;
    (reserved, charged)."""
    reserved, charged = tier.last_call()
    generated = (usage["prompt_tokens"] + usage["completion_tokens"]) * PER_TOKEN
    assert charged == generated <= reserved, (charged, generated, reserved)
    return reserved, charged


def streamed(stream: bool) -> dict[str, Any]:
    return {"stream": True, "stream_options": {"include_usage": True}} if stream else {}


CHAT = [{"role": "user", "content": "count to ten"}]
# Every generation parameter that can make vLLM produce more than `max_tokens` says.
GREEDY: dict[str, Any] = {
    "max_tokens": 4,
    "max_completion_tokens": 30,
    "n": 2,
    "best_of": 3,
    "min_tokens": 2,
    "ignore_eos": True,
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_chat_holds_and_charges_every_generated_token(tier: Tier, stream: bool) -> None:
    reply = tier.post("chat/completions", {"messages": CHAT, **GREEDY, **streamed(stream)})
    assert reply.status_code == 200, reply.text
    sent = tier.bodies()[-1]
    # vLLM prefers max_completion_tokens: the caller's 30 is the one limit upstream reads.
    assert sent["max_tokens"] == sent["max_completion_tokens"] == 30
    usage = usage_of(reply)
    assert usage["completion_tokens"] == 30 * 3  # best_of sequences were generated
    charged_exactly(tier, usage)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_completions_hold_every_prompt_of_a_batch(tier: Tier, stream: bool) -> None:
    body: dict[str, Any] = {
        "prompt": ["one two", "three four", "five"],
        "max_completion_tokens": 12,
        "max_tokens": 2,
        "n": 2,
        **streamed(stream),
    }
    reply = tier.post("completions", body)
    assert reply.status_code == 200, reply.text
    sent = tier.bodies()[-1]
    assert sent["max_tokens"] == 12 and "max_completion_tokens" not in sent
    usage = usage_of(reply)
    assert usage["completion_tokens"] == 3 * 2 * 12
    charged_exactly(tier, usage)


def test_a_default_limit_is_written_when_none_is_given(tier: Tier) -> None:
    reply = tier.post("chat/completions", {"messages": CHAT, "ignore_eos": True})
    assert reply.status_code == 200, reply.text
    sent = tier.bodies()[-1]
    # Without a limit vLLM fills the context: the deployment's default is written instead.
    assert sent["max_tokens"] == sent["max_completion_tokens"] == 512
    charged_exactly(tier, usage_of(reply))


def test_rest_query_and_mcp_query_instance_are_bounded_too(tier: Tier) -> None:
    with tier.server.client(tier.key) as http:
        asked = http.post(
            f"/v1/instances/{tier.instance['id']}/query",
            json={"messages": CHAT, "max_tokens": 7},
        )
    assert asked.status_code == 200, asked.text
    sent = tier.bodies()[-1]
    assert sent["max_tokens"] == sent["max_completion_tokens"] == 7
    charged_exactly(tier, asked.json()["usage"])

    async def over_mcp() -> dict[str, Any]:
        async with http_client(tier.server.url, tier.key) as client:
            return structured(
                await client.call_tool(
                    "query_instance",
                    {"instance_id": tier.instance["id"], "prompt": "x y", "max_tokens": 5},
                )
            )

    answered = asyncio.run(over_mcp())
    sent = tier.bodies()[-1]
    assert sent["max_tokens"] == 5 and "max_completion_tokens" not in sent
    assert answered["usage"]["completion_tokens"] == 5
    charged_exactly(tier, answered["usage"])


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("chat/completions", {"n": "16"}, "n"),
        ("chat/completions", {"max_completion_tokens": 1.5}, "max_completion_tokens"),
        ("chat/completions", {"max_tokens": "100000"}, "max_tokens"),
        ("chat/completions", {"max_tokens": 0}, "max_tokens"),
        ("chat/completions", {"best_of": True}, "best_of"),
        ("chat/completions", {"use_beam_search": "yes"}, "use_beam_search"),
        ("chat/completions", {"max_tokens": 10, "min_tokens": 11}, "min_tokens"),
        ("completions", {"prompt": {"text": "hi"}}, "prompt"),
        ("completions", {"prompt": [1, "two"]}, "prompt"),
    ],
)
def test_a_body_whose_bound_cannot_be_computed_is_refused(
    tier: Tier, path: str, extra: dict[str, Any], param: str
) -> None:
    sent_before = len(tier.bodies())
    holds_before = tier.sql("SELECT COUNT(*) FROM reservation WHERE workspace_id = :w", w=tier.ws)
    body = {"messages": CHAT} if path == "chat/completions" else {"prompt": "hi"}
    reply = tier.post(path, {**body, **extra})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    # Nothing was reserved and nothing reached the upstream.
    assert len(tier.bodies()) == sent_before
    assert (
        tier.sql("SELECT COUNT(*) FROM reservation WHERE workspace_id = :w", w=tier.ws)
        == holds_before
    )


def test_each_workspace_has_its_own_prefix_cache_on_a_shared_host(tier: Tier) -> None:
    other_ws, other_key = tier.server.workspace("neighbour@example.com", usd="1")
    with tier.server.client(other_key) as http:
        made = http.post(
            "/v1/instances", json={"model": tier.instance["model"], "tier": "shared-small"}
        )
        assert made.status_code == 202, made.text
        ready = wait_for_state(http, made.json()["id"], {"ready", "failed"}, timeout=120)
        assert ready["state"] == "ready", ready["last_error"]
    neighbour = {**ready, "instance_key": made.json()["instance_key"]}
    hosts = tier.sql(
        "SELECT DISTINCT upstream_url FROM instance WHERE id IN (:a, :b)",
        a=tier.instance["id"],
        b=neighbour["id"],
    )
    assert len(hosts) == 1  # one vLLM server, one prefix cache
    salts = []
    for instance in (tier.instance, neighbour, tier.instance):
        reply = httpx2.post(
            f"{tier.server.url}/v1/instances/{instance['id']}/chat/completions",
            headers={"Authorization": f"Bearer {instance['instance_key']}"},
            json={"messages": CHAT, "max_tokens": 2},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        salts.append(tier.bodies()[-1]["cache_salt"])
    mine, theirs, mine_again = salts
    # Stable per workspace (its own cache keeps working), different between workspaces,
    # and not something another tenant could derive (the workspace id).
    assert mine == mine_again and mine != theirs
    assert len(mine) >= 32 and tier.ws not in mine and other_ws not in theirs
    # A caller cannot choose a salt (to share or probe another's cache): refused, at the
    # top level or in extra_body, and nothing reaches the upstream.
    sent_before = len(tier.bodies())
    for body in ({"cache_salt": theirs}, {"extra_body": {"cache_salt": theirs}}):
        refused = tier.post("chat/completions", {"messages": CHAT, "max_tokens": 2, **body})
        assert refused.status_code == 400 and "cache_salt" in refused.json()["error"]["param"]
    assert len(tier.bodies()) == sent_before


def test_a_stream_cut_by_a_crash_is_charged_what_was_recorded_once(tmp_path: Path) -> None:
    models, prices = shared_small_setup(tmp_path)
    server = AuxenServer(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'auxen.db'}",
        {
            **instant_env(INSTANT_VLLM_TOKEN_DELAY_S="0.05"),
            "AUXEN_MODELS_DIR": str(models),
            "AUXEN_PRICES_FILE": str(prices),
            "AUXEN_USAGE_STREAM_STALE_S": "2",
        },
    ).start()
    try:
        _crash_mid_stream(server, str(models / "tiny"))
    finally:
        server.stop_clean()
        kill_instance_processes(tmp_path / "data")


def _crash_mid_stream(server: AuxenServer, model: str) -> None:
    ws, key = server.workspace("crash@example.com", usd="1")
    with server.client(key) as http:
        made = http.post("/v1/instances", json={"model": model, "tier": "shared-small"})
        assert made.status_code == 202, made.text
        ready = wait_for_state(http, made.json()["id"], {"ready", "failed"}, timeout=120)
        assert ready["state"] == "ready", ready["last_error"]
    instance_id, instance_key = ready["id"], made.json()["instance_key"]

    def rows() -> list[tuple[Any, ...]]:
        return sql(
            server.database_url,
            "SELECT outcome, prompt_tokens, completion_tokens FROM usage_record "
            "WHERE instance_id = :i",
            i=instance_id,
        )

    def doomed() -> None:
        with contextlib.suppress(httpx2.HTTPError):  # the server dies under it
            httpx2.post(
                f"{server.url}/v1/instances/{instance_id}/chat/completions",
                headers={"Authorization": f"Bearer {instance_key}"},
                json={"messages": CHAT, "max_tokens": 1000, "stream": True},
                timeout=60,
            )

    caller = threading.Thread(target=doomed)
    caller.start()
    deadline = time.monotonic() + 60
    # Wait until a checkpoint has recorded some of the stream's tokens.
    while not any(c > 10 for _, _, c in rows()) and time.monotonic() < deadline:
        time.sleep(0.05)
    server.stop(signal.SIGKILL)
    caller.join(timeout=60)
    ((outcome, prompt, recorded),) = rows()
    assert outcome == "streaming" and 10 < recorded < 1000
    server.start()
    still_open = settled_exactly(server.database_url, ws, wait_s=60)
    assert still_open and not any(still_open)  # the provisioning hold and the call's
    ((outcome, prompt, recorded),) = rows()
    assert outcome == "interrupted"
    charges = sql(
        server.database_url,
        "SELECT amount_micros FROM ledger_entry WHERE workspace_id = :w AND kind = 'charge'",
        w=ws,
    )
    # Charged once, for exactly the tokens the last checkpoint recorded.
    assert charges == [((prompt + recorded) * PER_TOKEN,)]
    with server.client(key) as http:
        balance = http.get("/v1/balance").json()
    assert balance["balance_micros"] == 1_000_000 - (prompt + recorded) * PER_TOKEN
    assert balance["held_micros"] == 0
