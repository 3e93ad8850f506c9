"""Keys, sealing and configuration rules, checked directly."""

from __future__ import annotations

import asyncio
import base64
import math
import os
from pathlib import Path

import pytest

from auxen.auth.keys import KEY_ID_LENGTH, SECRET_LENGTH, key_matches, mint_key, parse_key
from auxen.auth.sealing import UnsealError, seal, unseal
from auxen.config import ConfigError, Settings, normalise_database_url
from auxen.periodic import Periodic
from auxen.store.models import KeyKind


@pytest.mark.parametrize(
    ("kind", "live", "prefix"),
    [
        (KeyKind.ACCOUNT, True, "auxen_live_"),
        (KeyKind.ACCOUNT, False, "auxen_test_"),
        (KeyKind.INSTANCE, True, "auxk_"),
    ],
)
def test_minted_keys_parse_and_verify(kind: KeyKind, live: bool, prefix: str) -> None:
    key = mint_key(kind, livemode=live)
    assert key.plaintext.startswith(prefix)
    parsed = parse_key(key.plaintext)
    assert parsed is not None and parsed.key_id == key.key_id and parsed.kind is kind
    assert key_matches(key.plaintext, key.secret_hash)
    other = "y" if key.plaintext.endswith("x") else "x"  # really a different last character
    assert not key_matches(key.plaintext[:-1] + other, key.secret_hash)
    assert not key_matches(key.plaintext, None)
    assert key.plaintext not in key.display_prefix and len(key.display_prefix) < 20


def test_keys_carry_at_least_128_bits_of_secret() -> None:
    assert SECRET_LENGTH * math.log2(62) >= 128
    keys = {mint_key(KeyKind.ACCOUNT, livemode=True).plaintext for _ in range(1000)}
    assert len(keys) == 1000


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "auxen_live_",
        "auxen_live_short",
        "sk-123",
        "auxen_live_" + "!" * 48,
        "auxen_prod_" + "a" * 48,
        "auxk_" + "a" * (KEY_ID_LENGTH + SECRET_LENGTH + 1),
    ],
)
def test_malformed_keys_do_not_parse(bad: str) -> None:
    assert parse_key(bad) is None


def test_sealing_is_per_workspace_and_tamper_evident() -> None:
    master = os.urandom(32)
    box = seal(master, "ws_a", "upstream-secret")
    assert b"upstream-secret" not in box
    assert unseal(master, "ws_a", box) == "upstream-secret"
    with pytest.raises(UnsealError):
        unseal(master, "ws_b", box)
    with pytest.raises(UnsealError):
        unseal(os.urandom(32), "ws_a", box)
    tampered = box[:-1] + bytes([box[-1] ^ 1])
    with pytest.raises(UnsealError):
        unseal(master, "ws_a", tampered)


def test_production_refuses_to_start_without_a_master_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AUXEN_MASTER_KEY"):
        _ = Settings(env="production", data_dir=tmp_path).master_key_bytes
    assert not (tmp_path / "master.key").exists()
    key = base64.b64encode(os.urandom(32)).decode()
    assert len(Settings(env="production", master_key=key).master_key_bytes) == 32
    with pytest.raises(ConfigError):
        _ = Settings(master_key="c2hvcnQ=").master_key_bytes


@pytest.mark.parametrize(
    "weak",
    [bytes(32), b"password" * 4, bytes(range(32)), b"0123456789abcdef" * 2],
    ids=["zeros", "typed-text", "counting", "hex-text"],
)
def test_production_refuses_a_weak_master_key(weak: bytes, tmp_path: Path) -> None:
    key = base64.b64encode(weak).decode()
    with pytest.raises(ConfigError, match="weak"):
        _ = Settings(env="production", master_key=key, data_dir=tmp_path).master_key_bytes
    assert not (tmp_path / "master.key").exists()


def test_server_refuses_production_with_a_weak_master_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("AUXEN_")}
    env.update(
        AUXEN_ENV="production",
        AUXEN_DATA_DIR=str(tmp_path),
        AUXEN_MASTER_KEY=base64.b64encode(bytes(32)).decode(),
    )
    result = subprocess.run(
        [sys.executable, "-m", "auxen.cli.main", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "weak" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written: no key file, no database


def test_development_generates_one_master_key_and_keeps_it(tmp_path: Path) -> None:
    first = Settings(data_dir=tmp_path).master_key_bytes
    assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600
    assert Settings(data_dir=tmp_path).master_key_bytes == first


def test_database_urls_map_to_async_drivers() -> None:
    assert normalise_database_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert normalise_database_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalise_database_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"


def test_server_refuses_production_without_master_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("AUXEN_")}
    env.update(AUXEN_ENV="production", AUXEN_DATA_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "auxen.cli.main", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "AUXEN_MASTER_KEY" in result.stderr


def test_mcp_origin_rules_cover_loopback_the_public_url_and_configured_names() -> None:
    from auxen.mcp_server.http import transport_security

    plain = transport_security(Settings())
    assert plain.enable_dns_rebinding_protection
    assert {"127.0.0.1:*", "localhost:*", "[::1]:*"} <= set(plain.allowed_hosts)
    assert "mcp.example.com" not in plain.allowed_hosts
    deployed = transport_security(
        Settings(
            public_url="https://mcp.example.com",
            allowed_hosts="auxen.internal:8000, ",
            allowed_origins="https://app.example.com/",
        )
    )
    assert {"mcp.example.com", "auxen.internal:8000"} <= set(deployed.allowed_hosts)
    assert {"https://mcp.example.com", "https://app.example.com"} <= set(deployed.allowed_origins)
    assert "" not in deployed.allowed_hosts


def test_browser_cookies_are_host_bound_and_secure_over_https() -> None:
    from auxen.auth import web_sessions

    deployed = Settings(public_url="https://auxen.example.com")
    assert web_sessions.secure_cookies(deployed)
    assert web_sessions.cookie_name(deployed, "auxen_session") == "__Host-auxen_session"
    local = Settings()
    assert not web_sessions.secure_cookies(local)
    assert web_sessions.cookie_name(local, "auxen_session") == "auxen_session"


async def test_passwords_hash_with_argon2id_and_verify_in_constant_shape() -> None:
    from auxen.auth.passwords import hash_password, verify_password

    stored = await hash_password("a long enough password")
    assert stored.startswith("$argon2id$")
    assert await verify_password(stored, "a long enough password")
    assert not await verify_password(stored, "a long enough passworD")
    assert not await verify_password(None, "a long enough password")
    assert not await verify_password("not a hash", "a long enough password")


def test_the_local_provider_never_deletes_outside_an_instance_directory(tmp_path: Path) -> None:
    from auxen.config import Settings
    from auxen.inference.providers.local import LocalVllmProvider

    provider = LocalVllmProvider(Settings(data_dir=tmp_path))
    keep = provider.root / "inst_keep"
    keep.mkdir(parents=True)
    for bad in ("", ".", "..", "../data", "inst_x/../../"):
        with pytest.raises(ValueError):
            asyncio.run(provider.terminate("", bad))
    assert keep.is_dir()


def test_log_records_are_redacted_before_any_handler_sees_them() -> None:
    import io
    import logging

    from pydantic import BaseModel, ValidationError

    from auxen.logs import RedactingFilter

    class Body(BaseModel):
        max_tokens: int

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("auxen.test.redaction")
    logger.addHandler(handler)
    try:
        logger.warning("key %s and %s", "auxen_live_" + "k" * 24, "Bearer abcdefghijklmnop")
        logger.warning("upstream https://bob:hunter2@example.com/v1 refused hf_%s", "t" * 30)
        prompt = " ".join(["the", "secret", "prompt", "text"])
        try:
            Body.model_validate({"max_tokens": prompt})
        except ValidationError:
            logger.exception("validation failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    for secret in ("k" * 24, "abcdefghijklmnop", "hunter2", "t" * 30, "secret prompt"):
        assert secret not in text, text
    assert text.count("[redacted]") >= 5 and "ValidationError" in text


async def test_a_background_loop_stops_between_passes_never_inside_one() -> None:
    """A pass cancelled mid-statement leaves its connection to a failing rollback in the
    pool's finaliser (a traceback at every shutdown that hit it); stop waits instead."""
    events: list[str] = []
    inside = asyncio.Event()

    async def one_pass() -> None:
        events.append("begin")
        inside.set()
        await asyncio.sleep(0.2)
        events.append("end")

    loop = Periodic("test loop", one_pass, interval_s=0.01)
    loop.start()
    await inside.wait()
    await loop.stop()
    assert events == ["begin", "end"]
    assert not loop.running


async def test_a_pass_that_outlives_the_grace_is_cancelled() -> None:
    started = asyncio.Event()

    async def stuck() -> None:
        started.set()
        await asyncio.Event().wait()

    loop = Periodic("stuck loop", stuck, interval_s=1)
    loop.start()
    await started.wait()
    await loop.stop(grace_s=0.05)
    assert not loop.running
