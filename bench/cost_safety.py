"""Cost-safety drill: can any tenant or agent get tokens it has not paid for?

One run against a live `auxen serve` (SQLite) on the instant upstream that takes vLLM's
command line and bounds generation as vLLM does (`tests/instant_vllm.py`), billed per
token on the shared tier at $100 per million tokens (100 micro-dollars a token):

1. Overshoot: for the balance and each kind of cap that applies to tokens (instance,
   monthly, agent), a nearly spent limit and 16 concurrent streams; how far spend went
   past the limit (target: $0.000000).
2. Tokens generated versus charged, for bodies that try every generation parameter
   (`n`, `best_of`, `max_completion_tokens` over `max_tokens`, `min_tokens`,
   `ignore_eos`, beam search, prompt batches, no limit at all), streamed and not
   (target: generated == charged, for every body).
3. GPU seconds run versus billed across a control-plane kill: the watchdog's measurement
   (issue 17 item 4), not made here; the slot is printed as skipped.

Run: `.venv/bin/python bench/cost_safety.py`. Prints Markdown tables and writes
bench/results/cost_safety.json. See bench/README.md.
"""

from __future__ import annotations

import asyncio
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx2

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.ledger_checks import sql  # noqa: E402
from tests.servers import (  # noqa: E402
    AuxenServer,
    instant_env,
    kill_instance_processes,
    wait_for_state,
)

PER_TOKEN = 100  # micro-dollars
LIMIT_USD = "0.04"
LIMIT = 40_000
STREAMS = 16


class Drill:
    def __init__(self, root: Path) -> None:
        self.root = root
        models = root / "models"
        (models / "tiny").mkdir(parents=True)
        (models / "tiny" / "config.json").write_text(json.dumps({"model_type": "llama"}))
        self.model = str(models / "tiny")
        prices = root / "prices.toml"
        prices.write_text(
            '[shared_small]\ninput_usd_per_million = "100"\noutput_usd_per_million = "100"\n'
        )
        self.server = AuxenServer(
            root / "data",
            f"sqlite:///{root / 'auxen.db'}",
            {
                **instant_env(INSTANT_VLLM_TOKEN_DELAY_S="0.002"),
                "AUXEN_MODELS_DIR": self.model.rsplit("/", 1)[0],
                "AUXEN_PRICES_FILE": str(prices),
            },
        )

    def sql(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        return sql(self.server.database_url, query, **params)

    def provision(self, key: str, **extra: Any) -> dict[str, Any]:
        with self.server.client(key) as http:
            made = http.post(
                "/v1/instances", json={"model": self.model, "tier": "shared-small", **extra}
            )
            assert made.status_code == 202, made.text
            ready = wait_for_state(http, made.json()["id"], {"ready", "failed"}, timeout=120)
        assert ready["state"] == "ready", ready
        return {**ready, "instance_key": made.json()["instance_key"]}

    def settled(self, ws: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self.sql(
                "SELECT COUNT(*) FROM reservation WHERE workspace_id = :w AND open", w=ws
            )[0][0]:
                return
            time.sleep(0.2)
        raise AssertionError(f"holds of {ws} still open")

    def charged(self, ws: str, where: str = "", **params: Any) -> int:
        return int(
            self.sql(
                "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger_entry "
                f"WHERE workspace_id = :w AND kind = 'charge' {where}",
                w=ws,
                **params,
            )[0][0]
        )

    def storm(self, instance_id: str, key: str) -> list[int]:
        """16 concurrent streams of 64 tokens each; their status codes."""
        codes: list[int] = []
        lock = threading.Lock()
        gate = threading.Barrier(STREAMS)

        def one() -> None:
            gate.wait()
            with httpx2.stream(
                "POST",
                f"{self.server.url}/v1/instances/{instance_id}/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"prompt": "count to ten", "max_tokens": 64, "stream": True},
                timeout=120,
            ) as reply:
                for _ in reply.iter_lines():
                    pass
                with lock:
                    codes.append(reply.status_code)

        threads = [threading.Thread(target=one) for _ in range(STREAMS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        return codes

    # -- 1. overshoot ---------------------------------------------------------------

    def overshoot(self) -> list[dict[str, Any]]:
        rows = []
        ws, key = self.server.workspace("balance@drill.example", usd=LIMIT_USD)
        inst = self.provision(key)
        codes = self.storm(inst["id"], inst["instance_key"])
        self.settled(ws)
        spent = self.charged(ws)
        rows.append(self._row("balance", codes, spent))

        ws, key = self.server.workspace("instance@drill.example", usd="5")
        inst = self.provision(key, spend_cap_usd=LIMIT_USD)
        codes = self.storm(inst["id"], inst["instance_key"])
        self.settled(ws)
        rows.append(self._row("instance", codes, self.charged(ws)))

        ws, key = self.server.workspace("monthly@drill.example", usd="5")
        with self.server.client(key) as http:
            http.post("/v1/caps", json={"scope": "monthly", "amount_usd": LIMIT_USD})
        inst = self.provision(key)
        codes = self.storm(inst["id"], inst["instance_key"])
        self.settled(ws)
        rows.append(self._row("monthly", codes, self.charged(ws)))

        rows.append(self._agent())
        return rows

    def _agent(self) -> dict[str, Any]:
        """An OAuth agent capped per month provisions an instance; the storm comes through
        the instance's auxk_ key, not the agent's token."""
        from tests.mcp_clients import structured
        from tests.test_key_creators import dashboard_key
        from tests.test_oauth import Flow, Person, mcp_call

        person = Person(self.server, "agent@drill.example")
        ((ws,),) = self.sql(
            'SELECT m.workspace_id FROM membership m JOIN "user" u ON u.id = m.user_id '
            "WHERE u.email = :e",
            e="agent@drill.example",
        )
        self.server.cli("credits", "grant", "--workspace", ws, "--usd", "5", "--reference", "a")
        agent = Flow(self.server, person, scope="instances:read instances:write inference")
        token = agent.exchange(agent.code()).json()["access_token"]
        with self.server.client(dashboard_key(person, "drill")) as http:
            http.post(
                "/v1/caps",
                json={
                    "scope": "client_monthly",
                    "amount_usd": LIMIT_USD,
                    "client_id": agent.client_id,
                },
            ).raise_for_status()
        made = structured(
            asyncio.run(
                mcp_call(
                    self.server, token, "provision_instance",
                    {"model": self.model, "tier": "shared-small", "wait": True},
                )
            )
        )  # fmt: skip
        codes = self.storm(made["instance"]["id"], made["instance_key"])
        self.settled(ws)
        spent = self.charged(ws, "AND client_id = :c", c=agent.client_id)
        return self._row("agent (client_monthly), via auxk_", codes, spent)

    @staticmethod
    def _row(limit: str, codes: list[int], spent: int) -> dict[str, Any]:
        return {
            "limit": limit,
            "limit_usd": LIMIT_USD,
            "streams_200": codes.count(200),
            "streams_402": codes.count(402),
            "other": len(codes) - codes.count(200) - codes.count(402),
            "spent_micros": spent,
            "overshoot_usd": f"{max(0, spent - LIMIT) / 1_000_000:.6f}",
        }

    # -- 2. generated versus charged --------------------------------------------------

    def generated_vs_charged(self) -> list[dict[str, Any]]:
        ws, key = self.server.workspace("params@drill.example", usd="50")
        inst = self.provision(key)
        chat = [{"role": "user", "content": "count to ten"}]
        bodies: list[tuple[str, str, dict[str, Any]]] = [
            ("max_tokens", "chat/completions", {"messages": chat, "max_tokens": 16}),
            ("max_completion_tokens > max_tokens", "chat/completions",
             {"messages": chat, "max_tokens": 4, "max_completion_tokens": 40}),
            ("n=4", "chat/completions", {"messages": chat, "max_tokens": 10, "n": 4}),
            ("best_of=5, n=2", "completions",
             {"prompt": "one", "max_tokens": 10, "n": 2, "best_of": 5}),
            ("min_tokens + ignore_eos", "chat/completions",
             {"messages": chat, "max_tokens": 12, "min_tokens": 12, "ignore_eos": True}),
            ("use_beam_search, n=3", "completions",
             {"prompt": "one", "max_tokens": 8, "n": 3, "use_beam_search": True}),
            ("prompt batch of 4", "completions",
             {"prompt": ["a", "b c", "d", "e f g"], "max_tokens": 9}),
            ("no limit at all", "chat/completions", {"messages": chat}),
            ("everything at once", "completions",
             {"prompt": ["a", "b"], "max_tokens": 3, "max_completion_tokens": 20, "n": 2,
              "best_of": 3, "min_tokens": 1, "ignore_eos": True}),
        ]  # fmt: skip
        rows = []
        for name, path, body in bodies:
            for stream in (False, True):
                sent = dict(body)
                if stream:
                    sent.update(stream=True, stream_options={"include_usage": True})
                before = self.charged(ws)
                generated = self._generate(inst, path, sent)
                self.settled(ws)
                charged = self.charged(ws) - before
                rows.append(
                    {
                        "body": name,
                        "stream": stream,
                        "generated_tokens": generated,
                        "charged_tokens": charged // PER_TOKEN,
                        "equal": generated * PER_TOKEN == charged,
                    }
                )
        return rows

    def _generate(self, inst: dict[str, Any], path: str, body: dict[str, Any]) -> int:
        """Send one body; the tokens (prompt + completion) the upstream reported."""
        with httpx2.stream(
            "POST",
            f"{self.server.url}/v1/instances/{inst['id']}/{path}",
            headers={"Authorization": f"Bearer {inst['instance_key']}"},
            json=body,
            timeout=120,
        ) as reply:
            text = reply.read().decode()
        assert reply.status_code == 200, text
        if body.get("stream"):
            for line in text.splitlines():
                if line.startswith("data: {") and '"usage"' in line:
                    usage = json.loads(line[6:]).get("usage")
                    if usage:
                        return int(usage["total_tokens"])
            raise AssertionError("no usage chunk")
        return int(json.loads(text)["usage"]["total_tokens"])


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cost-drill-") as tmp:
        drill = Drill(Path(tmp))
        drill.server.start()
        try:
            overshoot = drill.overshoot()
            params = drill.generated_vs_charged()
        finally:
            drill.server.stop()
            kill_instance_processes(Path(tmp) / "data")
    print(f"## Overshoot, {STREAMS} concurrent streams of 64 tokens against a ${LIMIT_USD} limit")
    print("| limit | streams 200 | streams 402 | other | spent $ | overshoot $ |")
    print("|---|---|---|---|---|---|")
    for r in overshoot:
        print(
            f"| {r['limit']} | {r['streams_200']} | {r['streams_402']} | {r['other']} "
            f"| {r['spent_micros'] / 1e6:.6f} | {r['overshoot_usd']} |"
        )
    print("\n## Tokens generated versus charged, per body")
    print("| body | stream | generated | charged | equal |")
    print("|---|---|---|---|---|")
    for r in params:
        print(
            f"| {r['body']} | {r['stream']} | {r['generated_tokens']} "
            f"| {r['charged_tokens']} | {r['equal']} |"
        )
    print("\n## GPU seconds run versus billed across a control-plane kill")
    print("skipped: measured by the watchdog's drill (issue 17 item 4)")
    out = HERE / "results" / "cost_safety.json"
    out.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()}, Python {platform.python_version()}",
                "overshoot": overshoot,
                "generated_vs_charged": params,
                "gpu_seconds_across_kill": "skipped (watchdog, issue 17 item 4)",
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
