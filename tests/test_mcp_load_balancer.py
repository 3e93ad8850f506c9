"""MCP sessions behind a load balancer: two `auxen serve` processes on one PostgreSQL
database, behind HAProxy running docs/examples/haproxy.cfg exactly as the README gives
it. Sessions stay with the process that opened them; stateless requests go anywhere."""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2
import pytest

from tests.mcp_clients import INITIALIZE, http_client, structured
from tests.servers import REPO, AuxenServer, free_port

CONFIG = REPO / "docs/examples/haproxy.cfg"


@dataclass
class Deployment:
    a: AuxenServer
    b: AuxenServer
    url: str  # the load balancer
    key: str


@pytest.fixture(scope="module")
def deployment(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    root = tmp_path_factory.mktemp("balanced")
    env = {"AUXEN_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    a = AuxenServer(root / "a", database_url, dict(env)).start()
    b = AuxenServer(root / "b", database_url, dict(env)).start()
    port = free_port()
    balancer = subprocess.Popen(
        [haproxy, "-db", "-f", str(CONFIG)],
        env={
            "AUXEN_LB_BIND": f"127.0.0.1:{port}",
            "AUXEN_SERVER_A": f"127.0.0.1:{a.port}",
            "AUXEN_SERVER_B": f"127.0.0.1:{b.port}",
        },
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx2.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            assert balancer.poll() is None and time.monotonic() < deadline, "haproxy"
            time.sleep(0.2)
        yield Deployment(a, b, url, a.init_workspace("lb@example.com"))
    finally:
        balancer.terminate()
        balancer.wait(timeout=10)
        a.stop_clean()
        b.stop_clean()


def ping(base_url: str, key: str, session_id: str) -> int:
    return httpx2.post(
        f"{base_url}/mcp",
        json={"jsonrpc": "2.0", "id": 9, "method": "ping"},
        headers={
            "Authorization": f"Bearer {key}",
            "Accept": "application/json, text/event-stream",
            "Mcp-Session-Id": session_id,
            "MCP-Protocol-Version": "2025-11-25",
        },
    ).status_code


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_sessions_stick_to_their_server_behind_the_example_balancer(
    deployment: Deployment,
) -> None:
    d = deployment
    headers = {"Authorization": f"Bearer {d.key}", "Accept": "application/json, text/event-stream"}
    # A session lives in one process: the other answers 404 for it.
    opened = [httpx2.post(f"{d.url}/mcp", json=INITIALIZE, headers=headers) for _ in range(4)]
    ids = [r.headers["mcp-session-id"] for r in opened]
    homes = [(ping(d.a.url, d.key, sid), ping(d.b.url, d.key, sid)) for sid in ids]
    assert sorted(set(homes)) == [(200, 404), (404, 200)], homes  # both servers hold some
    # Through the balancer every request of each session reaches its home.
    for sid in ids:
        assert [ping(d.url, d.key, sid) for _ in range(4)] == [200] * 4

    async def agents() -> list[list[str]]:
        async def one() -> list[str]:
            async with http_client(d.url, d.key) as client:
                names = []
                for _ in range(3):
                    catalog = structured(await client.call_tool("list_models", {}))
                    names.append(str(sorted(catalog)))
                return names

        return await asyncio.gather(*(one() for _ in range(4)))

    assert all(len(calls) == 3 for calls in asyncio.run(agents()))

    async def stateless() -> None:
        async with http_client(d.url, d.key, mode="2026-07-28") as client:
            for _ in range(4):
                assert not (await client.call_tool("list_models", {})).is_error

    asyncio.run(stateless())
