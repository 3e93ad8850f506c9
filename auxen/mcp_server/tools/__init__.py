"""One module per family of MCP tools; each defines `tools(env) -> list[Tool]`."""
