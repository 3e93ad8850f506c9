"""Several `auxen serve` processes on one PostgreSQL database, as an operator runs them
(one data directory and master key, instant upstreams): they start together, hand
reconcile leadership on when one freezes, and agree on what a destroy means."""

from __future__ import annotations

import asyncio
import secrets
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL, POSTGRES, _pg_admin
from tests.servers import AuxenServer, instant_env

pytestmark = pytest.mark.skipif(not POSTGRES, reason="needs PostgreSQL on 127.0.0.1:5432")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (dropped afterwards)."""
    name = f"auxen_test_{secrets.token_hex(6)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def servers(root: Path, url: str, count: int, **env: str) -> Iterator[list[AuxenServer]]:
    """`count` servers on one database and data directory, started at the same moment;
    stopped at the end, failing the test if one logged a traceback."""
    started = [
        AuxenServer(root / "data", url, extra_env={**instant_env(), **env}).spawn()
        for _ in range(count)
    ]
    try:
        for server in started:
            server.wait_healthy()
        yield started
    finally:
        for server in started:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGCONT)  # a test may have frozen it
        for server in started:
            server.stop_clean()


def test_servers_started_together_on_an_empty_database_all_come_up(
    tmp_path: Path, pg_url: str
) -> None:
    with servers(tmp_path, pg_url, 3) as three:
        for server in three:
            assert server.client(None).get("/health").status_code == 200
        assert len({(server.data_dir / "master.key").read_text() for server in three}) == 1

