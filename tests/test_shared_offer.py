"""Shared GPU hosts are never free (issue 17, item 2), on a real `auxen serve` with the
instant upstream.

The shared-small tier serves only the models the operator lists (`[shared_small.models]`
in the prices file, each with its GPU), provisioning it needs the funds for a first
query, a host whose model has no live instance is stopped after
`AUXEN_SHARED_HOST_IDLE_S` and started again by the next instance (scale to zero), and
`auxen hosts` tells the operator what each host has cost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ledger_checks import sql
from tests.servers import AuxenServer, instant_env, wait_for_state
from tests.test_local_processes import end_deployment_processes, instance_processes, until


@dataclass
class Offer:
    server: AuxenServer
    listed: str
    unlisted: str

    def hosts(self, *flags: str) -> list[dict[str, Any]]:
        shown = self.server.cli("hosts", "--json", *flags)
        rows: list[dict[str, Any]] = json.loads(shown.stdout)
        return rows


@pytest.fixture
def offer(tmp_path: Path) -> Iterator[Offer]:
    models = tmp_path / "models"
    for name in ("listed", "unlisted"):
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text(json.dumps({"model_type": "llama"}))
    listed, unlisted = str(models / "listed"), str(models / "unlisted")
    prices = tmp_path / "prices.toml"
    prices.write_text(
        f'[gpu.cpu]\nhourly_usd = "1.80"\n[shared_small.models]\n"{listed}" = "cpu"\n'
    )
    server = AuxenServer(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'auxen.db'}",
        {
            **instant_env(),
            "AUXEN_MODELS_DIR": str(models),
            "AUXEN_PRICES_FILE": str(prices),
            "AUXEN_SHARED_HOST_IDLE_S": "2",
        },
    ).start()
    try:
        yield Offer(server, listed, unlisted)
    finally:
        server.stop_clean()
        end_deployment_processes(server.data_dir)


def test_shared_hosts_serve_listed_models_for_paying_workspaces_and_scale_to_zero(
    offer: Offer,
) -> None:
    shared = {"tier": "shared-small"}
    with offer.server.client(offer.server.init_workspace("broke@shared.example")) as broke:
        refused = broke.post("/v1/instances", json={"model": offer.listed, **shared})
        assert refused.status_code == 402, refused.text
        assert refused.json()["error"]["param"] == "balance"
    key = offer.server.init_workspace("payer@shared.example", usd="1")
    with offer.server.client(key) as http:
        for body, field in (
            ({"model": offer.unlisted}, "model"),
            ({"model": offer.listed, "gpu_type": "local-gpu"}, "gpu_type"),
        ):
            bad = http.post("/v1/instances", json={**body, **shared})
            assert bad.status_code == 400, bad.text
            assert bad.json()["error"]["param"] == field
        assert http.get("/v1/instances").json()["data"] == []
        assert sql(offer.server.database_url, "SELECT COUNT(*) FROM instance")[0][0] == 0

        made = http.post("/v1/instances", json={"model": offer.listed, **shared})
        assert made.status_code == 202, made.text
        first = made.json()["id"]
        assert wait_for_state(http, first, {"ready", "failed"}, timeout=120)["state"] == "ready"
        [host] = offer.hosts()
        assert (host["model"], host["gpu_type"], host["state"]) == (offer.listed, "cpu", "ready")
        assert host["live_instances"] == 1 and host["hourly_usd"] == "1.80"

        # No live instance: the host is stopped, its processes end.
        assert http.delete(f"/v1/instances/{first}").status_code == 200
        until(lambda: offer.hosts() == [], timeout=120)
        until(lambda: instance_processes(host["id"]) == [], timeout=60)
        [ended] = offer.hosts("--ended")
        assert ended["state"] == "destroyed" and float(ended["cost_usd"]) > 0

        # The next instance of the model starts a host again.
        again = http.post("/v1/instances", json={"model": offer.listed, **shared})
        assert again.status_code == 202, again.text
        second = again.json()["id"]
        assert wait_for_state(http, second, {"ready", "failed"}, timeout=120)["state"] == "ready"
        [restarted] = offer.hosts()
        assert restarted["id"] != host["id"] and restarted["live_instances"] == 1
    with offer.server.client(again.json()["instance_key"]) as instance:
        asked = instance.post(
            f"/v1/instances/{second}/chat/completions",
            json={"model": offer.listed, "messages": [{"role": "user", "content": "hi"}],
                  "max_tokens": 2},
        )  # fmt: skip
        assert asked.status_code == 200, asked.text
