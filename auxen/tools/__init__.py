"""The operations themselves, as plain async functions over a `Caller`.

MCP, REST and the CLI are thin adapters over these; nothing here knows about HTTP,
JSON-RPC or terminals.
"""
