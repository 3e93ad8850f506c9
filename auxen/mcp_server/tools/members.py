"""list_members: who is in the workspace, with their roles.

Managing people (inviting, changing roles, removing, transferring ownership, deleting
the workspace) is deliberately not offered to agents: those decisions change who can
spend the workspace's money and see its data, an agent can be steered by what it reads
(prompt injection), and each is one REST call or one click on the members page for the
person who should make it. See docs/security.md.
"""

from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from pydantic import BaseModel

from auxen.mcp_server.server import READ_ONLY, ToolEnv, scope
from auxen.tools import members
from auxen.tools.members import MemberView


class Members(BaseModel):
    members: list[MemberView]


def tools(env: ToolEnv) -> list[Tool]:
    async def list_members(ctx: Context[Any, Any]) -> Members:
        return Members(members=await env.call(ctx, members.list_members))

    return [
        Tool.from_function(
            list_members,
            meta=scope("instances:read"),
            title="List workspace members",
            description="The people in this workspace and their roles (owner, admin, "
            "member). Members use instances and knowledge bases; admins also manage "
            "members, keys, caps and billing; the owner can also delete the workspace.",
            annotations=READ_ONLY,
        )
    ]
