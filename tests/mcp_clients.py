"""Connecting the MCP Python SDK client to Auxen: Streamable HTTP with a key, or stdio."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from tests.servers import AuxenServer

# A raw JSON-RPC initialize request (for tests that speak HTTP to /mcp themselves).
INITIALIZE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


@asynccontextmanager
async def http_client(
    base_url: str, key: str | None, *, mode: str = "legacy"
) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=600.0))
    async with (
        http,
        Client(streamable_http_client(f"{base_url}/mcp", http_client=http), mode=mode) as client,
    ):
        yield client


@asynccontextmanager
async def stdio_client(server: AuxenServer, key: str, **env: str) -> AsyncIterator[Client]:
    """`auxen mcp` as a subprocess, configured like `server` (its data dir and database)."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "auxen.cli.main", "mcp"],
        env={**server.env(), "AUXEN_API_KEY": key, **env},
        cwd=os.getcwd(),
    )
    async with Client(params, read_timeout_seconds=600) as client:
        yield client


def error_text(result: CallToolResult) -> str:
    assert result.is_error, f"expected a tool error, got {result.structured_content}"
    text = result.content[0].text  # type: ignore[union-attr]
    assert isinstance(text, str)
    return text


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content
