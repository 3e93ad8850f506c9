"""OAuth 2.1 authorization server for the MCP endpoint: DCR, PKCE, consent, tokens."""

from __future__ import annotations

SCOPES = ("instances:read", "instances:write", "inference", "kb", "billing")
DEFAULT_SCOPES = ("instances:read", "instances:write", "inference", "kb")
SCOPE_DESCRIPTIONS = {
    "instances:read": "see your instances, models and usage",
    "instances:write": "provision and destroy instances (which costs money)",
    "inference": "send prompts to your instances",
    "kb": "manage knowledge bases",
    "billing": "see and change billing",
}
ACCESS_PREFIX = "auxo_"
REFRESH_PREFIX = "auxr_"


def resource_url(base_url: str) -> str:
    """The MCP endpoint's resource identifier (RFC 8707): tokens are bound to it."""
    return f"{base_url}/mcp"


def same_resource(given: str, resource: str) -> bool:
    """Whether a `resource` parameter names `resource` (a trailing slash aside)."""
    return given.rstrip("/") == resource.rstrip("/")
