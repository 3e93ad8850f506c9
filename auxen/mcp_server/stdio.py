"""`auxen mcp`: the MCP server on stdio, for agents that start it as a subprocess.

Per the MCP spec, stdio takes its credentials from the environment, not OAuth:
`AUXEN_API_KEY` always; with `AUXEN_URL` the tools run on that remote server (this
process relays stdio to its `/mcp`); without it they run here, embedded, on the local
database and provider, exactly as `auxen serve` would run them. stdout carries nothing
but JSON-RPC; every log line goes to stderr.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp_types import (
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
)

from auxen import __version__
from auxen.config import Settings
from auxen.mcp_server.server import INSTRUCTIONS, build_server
from auxen.runtime import Runtime
from auxen.tools.context import Caller

log = logging.getLogger(__name__)


async def serve_embedded(settings: Settings, api_key: str) -> None:
    """Run the tools in this process against the local database and provider."""
    rt = Runtime.build(settings)
    await rt.start(background=True)
    try:
        await rt.auth.authenticate(api_key)  # fail at start, not at the first tool call

        async def caller_of(_ctx: Any) -> Caller:
            # Checked on every call (cached for seconds), so a revoked key stops working.
            return replace(await rt.auth.authenticate(api_key), address="local")

        await build_server(rt, caller_of).run_stdio_async()
    finally:
        await rt.close()


async def serve_remote(url: str, api_key: str) -> None:
    """Relay stdio to a remote Auxen's /mcp: tools, results, errors and progress."""
    endpoint = url.rstrip("/") + "/mcp"
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=httpx2.Timeout(30.0, read=None),  # a waiting provision streams progress
    )
    async with http, Client(streamable_http_client(endpoint, http_client=http)) as remote:

        async def list_tools(_ctx: Any, params: PaginatedRequestParams | None) -> ListToolsResult:
            return await remote.list_tools(cursor=params.cursor if params else None)

        async def call_tool(ctx: Any, params: CallToolRequestParams) -> CallToolResult:
            async def relay_progress(
                progress: float, total: float | None, message: str | None
            ) -> None:
                await ctx.session.report_progress(progress, total, message)

            try:
                return await remote.call_tool(
                    params.name, params.arguments or {}, progress_callback=relay_progress
                )
            except httpx2.HTTPError as exc:
                log.warning("remote Auxen at %s failed: %s", endpoint, type(exc).__name__)
                return CallToolResult(
                    content=[
                        TextContent(
                            type="text",
                            text=f"unavailable: cannot reach Auxen at {endpoint} "
                            f"({type(exc).__name__}); try again shortly",
                        )
                    ],
                    is_error=True,
                )

        relay: Server[Any] = Server(
            "auxen",
            version=__version__,
            instructions=INSTRUCTIONS,
            on_list_tools=list_tools,
            on_call_tool=call_tool,
        )
        async with stdio_server() as (read, write):
            await relay.run(read, write, relay.create_initialization_options())
