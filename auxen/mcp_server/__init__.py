"""MCP adapter: `auxen.tools` as MCP tools over Streamable HTTP (`/mcp`) and stdio."""
