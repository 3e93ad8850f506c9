"""Bring your own key, and the master key it is sealed under, on real servers over SQLite
and PostgreSQL: a stored credential never comes back out, the database holds only
ciphertext, one workspace's key cannot open another's, and rotating the master key
re-seals every sealed value so the server runs on with the new key alone.
(Using the credentials: tests/test_journey_runpod.py runs a workspace's pods in its own
RunPod account with its own Hugging Face token.)"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel

from auxen.auth.rotation import SEALED
from auxen.auth.sealing import UnsealError, seal, unseal
from auxen.store.db import Database
from tests.servers import AuxenServer

OLD_KEY = base64.b64encode(os.urandom(32)).decode()
NEW_KEY = base64.b64encode(os.urandom(32)).decode()
HF = "hf_" + secrets.token_hex(17)
RUNPOD = "rpa_" + secrets.token_hex(16)
TOTP = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


class World:
    def __init__(self, server: AuxenServer) -> None:
        self.server = server
        self.ws_a, self.key_a = server.workspace("a@example.com")
        self.ws_b, self.key_b = server.workspace("b@example.com")
        server.start()
        self.a = server.client(self.key_a)
        self.b = server.client(self.key_b)

    def rows(self, sql: str, **params: Any) -> list[Any]:
        async def go() -> list[Any]:
            db = Database(self.server.database_url)
            try:
                async with db.engine.connect() as conn:
                    return list((await conn.execute(sa.text(sql), params)).all())
            finally:
                await db.close()

        return asyncio.run(go())

    def execute(self, sql: str, **params: Any) -> None:
        async def go() -> None:
            db = Database(self.server.database_url)
            try:
                async with db.engine.begin() as conn:
                    await conn.execute(sa.text(sql), params)
            finally:
                await db.close()

        asyncio.run(go())


@pytest.fixture(scope="module")
def world(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("byok")
    if database_url.startswith("sqlite"):
        database_url = f"sqlite:///{root / 'data' / 'auxen.db'}"
    server = AuxenServer(root / "data", database_url, extra_env={"AUXEN_MASTER_KEY": OLD_KEY})
    (root / "data").mkdir()
    w = World(server)
    try:
        yield w
    finally:
        server.stop()


def test_a_stored_credential_never_comes_back(world: World) -> None:
    stored = world.a.put("/v1/credentials/huggingface", json={"secret": HF})
    assert stored.status_code == 200, stored.text
    view = stored.json()
    assert view["provider"] == "huggingface" and view["last4"] == HF[-4:]
    assert view["fingerprint"].startswith("fp_") and HF not in stored.text
    assert world.a.put("/v1/credentials/runpod", json={"secret": RUNPOD}).status_code == 200
    listed = world.a.get("/v1/credentials")
    assert [c["provider"] for c in listed.json()["data"]] == ["huggingface", "runpod"]
    assert HF not in listed.text and RUNPOD not in listed.text
    # Another workspace sees none of it.
    assert world.b.get("/v1/credentials").json()["data"] == []
    assert world.b.delete("/v1/credentials/runpod").status_code == 404
    # Replacing keeps one row per provider, with a new fingerprint.
    again = world.a.put("/v1/credentials/huggingface", json={"secret": HF + "x"}).json()
    assert again["fingerprint"] != view["fingerprint"]
    assert world.a.put("/v1/credentials/huggingface", json={"secret": HF}).status_code == 200


def test_bad_credentials_are_refused_by_field_and_change_nothing(world: World) -> None:
    before = world.a.get("/v1/credentials").json()
    for path, body, param in (
        ("/v1/credentials/openai", {"secret": "sk-" + "x" * 20}, "provider"),
        ("/v1/credentials/huggingface", {"secret": "not-a-hf-token"}, "secret"),
        ("/v1/credentials/huggingface", {"secret": "hf_ has spaces"}, "secret"),
        ("/v1/credentials/runpod", {"secret": "short"}, "secret"),
        ("/v1/credentials/runpod", {"secret": RUNPOD, "note": "x"}, "note"),
        ("/v1/credentials/runpod", {}, "secret"),
    ):
        reply = world.a.put(path, json=body)
        assert reply.status_code == 400, (path, body, reply.text)
        assert reply.json()["error"]["param"] == param, reply.text
        assert "hf_ has spaces" not in reply.text  # the refused value is not echoed
    assert world.a.get("/v1/credentials").json() == before


def test_the_database_holds_only_ciphertext(world: World) -> None:
    rows = world.rows("SELECT workspace_id, provider, sealed FROM provider_credential")
    assert {(ws, provider) for ws, provider, _ in rows} == {
        (world.ws_a, "huggingface"),
        (world.ws_a, "runpod"),
    }
    for _, _, sealed in rows:
        assert HF.encode() not in bytes(sealed) and RUNPOD.encode() not in bytes(sealed)
    if world.server.database_url.startswith("sqlite"):
        for path in world.server.data_dir.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert HF.encode() not in data and RUNPOD.encode() not in data, path
    else:
        dump = world.rows("SELECT provider_credential::text FROM provider_credential")
        assert all(HF not in row[0] and RUNPOD not in row[0] for row in dump)
    assert HF not in world.server.log_path.read_text()


def test_one_workspace_key_cannot_open_another_workspace_secret(world: World) -> None:
    master = base64.b64decode(OLD_KEY)
    (sealed,) = world.rows("SELECT sealed FROM provider_credential WHERE provider = 'huggingface'")[
        0
    ]
    assert unseal(master, world.ws_a, bytes(sealed)) == HF
    with pytest.raises(UnsealError):
        unseal(master, world.ws_b, bytes(sealed))
    with pytest.raises(UnsealError):
        unseal(base64.b64decode(NEW_KEY), world.ws_a, bytes(sealed))


def test_every_sealed_column_is_rotated() -> None:
    listed = {(s.model.__tablename__, s.column) for s in SEALED}
    for mapper in SQLModel._sa_registry.mappers:
        table = mapper.class_.__table__
        for column in table.columns:
            if column.name == "sealed" or column.name.endswith("_sealed"):
                assert (table.name, column.name) in listed, f"{table.name}.{column.name}"


def test_rotating_the_master_key_reseals_everything(world: World) -> None:
    old, new = base64.b64decode(OLD_KEY), base64.b64decode(NEW_KEY)
    # A sealed value of every kind: credentials (above), an alert webhook secret, a TOTP
    # seed, an instance's upstream key.
    assert world.a.put("/v1/alerts/webhook", json={"url": "https://example.com/h"}).status_code
    (user_id,) = world.rows("SELECT id FROM \"user\" WHERE email = 'a@example.com'")[0]
    world.execute(
        'UPDATE "user" SET totp_secret_sealed = :s WHERE id = :u',
        s=seal(old, user_id, TOTP),
        u=user_id,
    )
    before = {c["provider"]: c for c in world.a.get("/v1/credentials").json()["data"]}
    world.server.stop()

    refused = world.server.cli(
        "master-key",
        "rotate",
        check=False,
        AUXEN_NEW_MASTER_KEY=base64.b64encode(bytes(32)).decode(),
    )
    assert refused.returncode == 2 and "weak" in refused.stderr
    rotated = world.server.cli("master-key", "rotate", AUXEN_NEW_MASTER_KEY=NEW_KEY)
    assert "provider_credential.sealed: 2 re-sealed" in rotated.stdout, rotated.stdout
    # Run again (as after an interruption): everything is already under the new key.
    again = world.server.cli(
        "master-key", "rotate", AUXEN_MASTER_KEY=OLD_KEY, AUXEN_NEW_MASTER_KEY=NEW_KEY
    )
    assert "already sealed under the new key" in again.stdout, again.stdout

    for ws, sealed in world.rows("SELECT workspace_id, sealed FROM provider_credential"):
        assert unseal(new, ws, bytes(sealed)) in (HF, RUNPOD)
        with pytest.raises(UnsealError):
            unseal(old, ws, bytes(sealed))
    (totp,) = world.rows('SELECT totp_secret_sealed FROM "user" WHERE id = :u', u=user_id)[0]
    assert unseal(new, user_id, bytes(totp)) == TOTP
    (hook,) = world.rows(
        "SELECT secret_sealed FROM webhook_endpoint WHERE workspace_id = :w", w=world.ws_a
    )[0]
    assert unseal(new, world.ws_a, bytes(hook)).startswith("whsec_")

    world.server.extra_env["AUXEN_MASTER_KEY"] = NEW_KEY
    world.server.start()
    after = {c["provider"]: c for c in world.a.get("/v1/credentials").json()["data"]}
    assert {p: c["last4"] for p, c in after.items()} == {p: c["last4"] for p, c in before.items()}
    assert all(after[p]["fingerprint"] != before[p]["fingerprint"] for p in after)


def test_a_value_that_opens_under_neither_key_stops_the_rotation(world: World) -> None:
    stranger = seal(os.urandom(32), world.ws_b, "from elsewhere")
    world.execute(
        "UPDATE workspace SET alert_webhook_sealed = :s WHERE id = :w", s=stranger, w=world.ws_b
    )
    snapshot = world.rows("SELECT id, sealed FROM provider_credential ORDER BY id")
    failed = world.server.cli(
        "master-key",
        "rotate",
        check=False,
        AUXEN_MASTER_KEY=NEW_KEY,
        AUXEN_NEW_MASTER_KEY=base64.b64encode(os.urandom(32)).decode(),
    )
    assert failed.returncode == 1 and "opens under neither key" in " ".join(failed.stderr.split())
    assert world.rows("SELECT id, sealed FROM provider_credential ORDER BY id") == snapshot
