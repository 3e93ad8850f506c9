"""Bad input on every REST endpoint gets a clear 4xx JSON error naming the problem and
changes nothing; keys behave as promised. Runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import func, select

from auxen.store.db import Database
from auxen.store.models import ApiKey, Instance
from tests.servers import AuxenServer


class Api:
    def __init__(self, server: AuxenServer, key: str, test_key: str) -> None:
        self.server = server
        self.key = key
        self.test_key = test_key
        self.http = server.client(key)

    def counts(self) -> tuple[int, int]:
        async def count() -> tuple[int, int]:
            db = Database(self.server.database_url)
            try:
                async with db.system() as s:
                    instances = (await s.exec(select(func.count()).select_from(Instance))).one()
                    keys = (await s.exec(select(func.count()).select_from(ApiKey))).one()
                    return instances, keys
            finally:
                await db.close()

        return asyncio.run(count())


@pytest.fixture(scope="module")
def api(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("api")
    server = AuxenServer(root / "data", database_url)
    key = server.init_workspace("owner@example.com")
    test_key = server.init_workspace("tester@example.com", test=True)
    server.start()
    try:
        yield Api(server, key, test_key)
    finally:
        server.stop_clean()


def test_health(api: Api) -> None:
    reply = api.server.client(None).get("/health")
    assert reply.status_code == 200 and reply.json()["status"] == "ok"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/instances"),
        ("POST", "/v1/instances"),
        ("GET", "/v1/instances/inst_x"),
        ("DELETE", "/v1/instances/inst_x"),
        ("GET", "/v1/keys"),
        ("POST", "/v1/keys"),
        ("DELETE", "/v1/keys/k"),
        ("GET", "/v1/usage"),
        ("POST", "/v1/instances/inst_x/chat/completions"),
    ],
)
def test_every_endpoint_requires_a_valid_key(api: Api, method: str, path: str) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer auxen_live_" + "A" * 48},
    ):
        reply = api.server.client(None).request(method, path, headers=headers, json={})
        assert reply.status_code == 401, (method, path, headers, reply.text)
        assert reply.json()["error"]["type"] == "authentication_error"
        assert reply.headers["www-authenticate"].startswith("Bearer")


BAD_PROVISIONS = [
    (b"{not json", None),
    (b"", None),
    (b'"a string"', None),
    (json.dumps({}).encode(), "model"),
    (json.dumps({"model": ""}).encode(), "model"),
    (json.dumps({"model": 5}).encode(), "model"),
    (json.dumps({"model": "/no/such/dir"}).encode(), "model"),
    (json.dumps({"model": "not a valid id!"}).encode(), "model"),
    (json.dumps({"model": "org/m", "gpu_type": "H100-80GB"}).encode(), "gpu_type"),
    (json.dumps({"model": "org/m", "gpu_type": "TPU9"}).encode(), "gpu_type"),
    (json.dumps({"model": "org/m", "tier": "shared-huge"}).encode(), "tier"),
    (json.dumps({"model": "org/m", "tier": "premium"}).encode(), "tier"),
    (json.dumps({"model": "org/m", "ttl": 5}).encode(), "ttl"),
    (json.dumps({"model": "org/m", "ttl": 10**9}).encode(), "ttl"),
    (json.dumps({"model": "org/m", "ttl": "soon"}).encode(), "ttl"),
    (json.dumps({"model": "org/m", "idempotency_key": ""}).encode(), "idempotency_key"),
    (json.dumps({"model": "org/m", "colour": "red"}).encode(), "colour"),
]


@pytest.mark.parametrize(("body", "param"), BAD_PROVISIONS)
def test_bad_provision_requests_change_nothing(api: Api, body: bytes, param: str | None) -> None:
    before = api.counts()
    reply = api.http.post(
        "/v1/instances", content=body, headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    assert api.counts() == before


def test_oversized_bodies_are_refused(api: Api) -> None:
    before = api.counts()
    big = b'{"model": "' + b"a" * 2_000_000 + b'"}'
    reply = api.http.post(
        "/v1/instances", content=big, headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 413
    assert api.counts() == before


def test_unknown_ids_and_paths(api: Api) -> None:
    for method, path in (
        ("GET", "/v1/instances/inst_nope"),
        ("DELETE", "/v1/instances/inst_nope"),
        ("DELETE", "/v1/keys/nope"),
        ("POST", "/v1/instances/inst_nope/keys"),
    ):
        reply = api.http.request(method, path, json={})
        assert reply.status_code == 404, (path, reply.text)
        assert reply.json()["error"]["type"] == "not_found_error"
    for path in ("/v1/instances/inst_nope/chat/completions", "/v1/instances/inst_nope/completions"):
        reply = api.http.post(path, json={"messages": []})
        assert reply.status_code == 404 and reply.json()["error"]["param"] == "instance_id"
    assert api.http.get("/v1/instances/inst_nope/models").status_code == 404
    missing = api.http.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    wrong_method = api.http.put("/v1/instances")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_bad_query_parameters(api: Api) -> None:
    assert (
        api.http.get("/v1/instances", params={"state": "asleep"}).json()["error"]["param"]
        == "state"
    )
    assert api.http.get("/v1/instances", params={"limit": "many"}).status_code == 400
    assert api.http.get("/v1/instances", params={"limit": "0"}).status_code == 400
    assert (
        api.http.get("/v1/usage", params={"since": "yesterday"}).json()["error"]["param"] == "since"
    )


def test_keys_are_shown_once_hashed_and_revocable(api: Api) -> None:
    made = api.http.post("/v1/keys", json={"name": "ci"})
    assert made.status_code == 201
    body = made.json()
    assert body["key"].startswith("auxen_live_") and body["kind"] == "account"
    listed = api.http.get("/v1/keys").json()["data"]
    assert body["id"] in {k["id"] for k in listed}
    assert all("key" not in k and "secret_hash" not in k for k in listed)
    fresh = api.server.client(body["key"])
    assert fresh.get("/v1/instances").status_code == 200
    for _ in range(50):  # last use is written off the request path
        used = {k["id"]: k for k in api.http.get("/v1/keys").json()["data"]}[body["id"]]
        if used["last_used_at"] is not None:
            break
        time.sleep(0.1)
    assert used["last_used_at"] is not None
    revoked = api.http.delete(f"/v1/keys/{body['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert api.http.delete(f"/v1/keys/{body['id']}").status_code == 200  # harmless again
    denied = fresh.get("/v1/instances")
    assert denied.status_code == 401 and "revoked" in denied.json()["error"]["message"]
    assert body["id"] not in {k["id"] for k in api.http.get("/v1/keys").json()["data"]}


def test_key_create_rejects_bad_fields(api: Api) -> None:
    before = api.counts()
    for body, param in (
        ({"name": "x" * 300}, "name"),
        ({"livemode": "maybe"}, "livemode"),
        ({"scopes": ["all"]}, "scopes"),
    ):
        reply = api.http.post("/v1/keys", json=body)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param
    assert api.http.post("/v1/keys", json={"instance_id": "inst_none"}).status_code == 404
    assert api.counts() == before


def test_test_keys_and_other_workspaces_see_nothing_of_each_other(api: Api) -> None:
    mine = api.http.get("/v1/keys").json()["data"]
    theirs = api.server.client(api.test_key).get("/v1/keys").json()["data"]
    assert not {k["id"] for k in mine} & {k["id"] for k in theirs}
    for key in theirs:
        assert api.http.delete(f"/v1/keys/{key['id']}").status_code == 404
    after = api.server.client(api.test_key).get("/v1/keys").json()["data"]
    assert [(k["id"], k["revoked_at"]) for k in after] == [(k["id"], None) for k in theirs]


def test_cli_reports_errors_clearly(api: Api, tmp_path: Path) -> None:
    result = api.server.cli(
        "instances",
        "provision",
        "--model",
        "/no/such/dir",
        "--no-wait",
        check=False,
        AUXEN_API_KEY=api.key,
    )
    assert result.returncode == 1
    assert "error (model)" in result.stderr and "AUXEN_MODELS_DIR" in result.stderr
    listed = api.server.cli("keys", "list", "--json", AUXEN_API_KEY=api.key)
    assert json.loads(listed.stdout)
    fresh = api.server.client(api.key).post("/v1/keys", json={"name": "unused"}).json()
    table = api.server.cli("keys", "list", AUXEN_API_KEY=api.key, COLUMNS="200").stdout
    row = next(line for line in table.splitlines() if fresh["id"] in line)
    assert "never" in row, table
    unauth = api.server.cli("instances", "list", check=False, AUXEN_API_KEY="")
    assert unauth.returncode == 2 and "AUXEN_API_KEY" in unauth.stderr
