"""Auxen: an MCP-first control plane for private LLM inference."""

__version__ = "0.1.0"
