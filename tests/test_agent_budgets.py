"""An agent's budget covers everything its instances spend (issue 17, item 3): an OAuth
agent provisions a per-token instance, and its queries count against its monthly budget
whichever way they arrive: MCP `query_instance` with its own token, the OpenAI-compatible
endpoint with the `auxk_` key `provision_instance` returned, and REST `query` with a
person's account key. Once the budget is spent, every one of those ways is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.ledger_checks import settled_exactly, sql
from tests.mcp_clients import error_text, structured
from tests.servers import AuxenServer, instant_env, kill_instance_processes, shared_small_setup
from tests.test_key_creators import dashboard_key
from tests.test_oauth import Flow, Person, mcp_call

PER_TOKEN = 100  # micro-dollars per token, in and out
BUDGET = 20_000  # the agent's monthly budget: $0.02


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuxenServer]:
    root = tmp_path_factory.mktemp("agent-budgets")
    models, prices = shared_small_setup(root)
    server = AuxenServer(
        root / "data",
        f"sqlite:///{root / 'auxen.db'}",
        {**instant_env(), "AUXEN_MODELS_DIR": str(models), "AUXEN_PRICES_FILE": str(prices)},
    ).start()
    try:
        yield server
    finally:
        server.stop_clean()
        kill_instance_processes(root / "data")


def test_an_agents_budget_holds_whichever_key_reaches_its_instance(server: AuxenServer) -> None:
    person = Person(server, "agent-owner@example.com")
    ((ws,),) = sql(
        server.database_url,
        'SELECT m.workspace_id FROM membership m JOIN "user" u ON u.id = m.user_id '
        "WHERE u.email = :e",
        e="agent-owner@example.com",
    )
    server.cli("credits", "grant", "--workspace", ws, "--usd", "5", "--reference", "agent-r")
    agent = Flow(server, person, scope="instances:read instances:write inference")
    token = agent.exchange(agent.code()).json()["access_token"]
    account_key = dashboard_key(person, "a person's key")  # no agent behind it

    model = str(Path(server.data_dir).parent / "models" / "tiny")
    made = structured(
        asyncio.run(
            mcp_call(
                server, token, "provision_instance",
                {"model": model, "tier": "shared-small", "ttl_hours": 1, "wait": True},
            )
        )
    )  # fmt: skip
    instance_id, instance_key = made["instance"]["id"], made["instance_key"]
    assert made["instance"]["state"] == "ready", made
    # The budget is set once the instance runs: provisioning shared-small holds (and then
    # releases) a first query's worth at the default max_tokens, more than this budget.
    with server.client(account_key) as http:
        capped = http.post(
            "/v1/caps",
            json={"scope": "client_monthly", "amount_usd": "0.02", "client_id": agent.client_id},
        )
        assert capped.status_code == 200, capped.text

    def over_mcp(max_tokens: int) -> Any:
        return asyncio.run(
            mcp_call(
                server, token, "query_instance",
                {"instance_id": instance_id, "prompt": "hi", "max_tokens": max_tokens},
            )
        )  # fmt: skip

    def over_openai(max_tokens: int) -> httpx2.Response:
        return httpx2.post(
            f"{server.url}/v1/instances/{instance_id}/completions",
            headers={"Authorization": f"Bearer {instance_key}"},
            json={"prompt": "hi", "max_tokens": max_tokens},
            timeout=60,
        )

    def over_rest(max_tokens: int) -> httpx2.Response:
        with server.client(account_key) as http:
            return http.post(
                f"/v1/instances/{instance_id}/query",
                json={"prompt": "hi", "max_tokens": max_tokens},
            )

    # One call each way, each 1 prompt + 20 completion tokens.
    assert structured(over_mcp(20))["usage"]["completion_tokens"] == 20
    assert over_openai(20).status_code == 200
    assert over_rest(20).status_code == 200
    assert not any(settled_exactly(server.database_url, ws, wait_s=20))
    by_agent = sql(
        server.database_url,
        "SELECT COALESCE(client_id, '-'), SUM(amount_micros) FROM ledger_entry "
        "WHERE workspace_id = :w AND kind = 'charge' AND instance_id = :i GROUP BY client_id",
        w=ws,
        i=instance_id,
    )
    # Every charge of the agent's instance is the agent's, whoever's key caused it.
    assert by_agent == [(agent.client_id, 3 * 21 * PER_TOKEN)]

    # What is left of the budget (13 700) cannot hold a 200-token answer (20 600),
    # whichever way it is asked for; a small one still fits.
    refused = over_openai(200)
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["param"] == "client_monthly"
    refused = over_rest(200)
    assert refused.status_code == 402 and refused.json()["error"]["param"] == "client_monthly"
    result = over_mcp(200)
    assert "agent's monthly budget" in error_text(result)
    assert over_openai(20).status_code == 200
    assert not any(settled_exactly(server.database_url, ws, wait_s=20))
    ((spent,),) = sql(
        server.database_url,
        "SELECT SUM(amount_micros) FROM ledger_entry WHERE client_id = :c AND kind = 'charge'",
        c=agent.client_id,
    )
    assert spent == 4 * 21 * PER_TOKEN <= BUDGET
