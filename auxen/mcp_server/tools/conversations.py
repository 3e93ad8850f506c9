"""get_conversation, list_conversations, delete_conversation: the history an instance
provisioned with history=true keeps."""

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from auxen.mcp_server.args import ConversationId, InstanceId
from auxen.mcp_server.server import READ_ONLY, ToolEnv, scope
from auxen.tools import conversations
from auxen.tools.conversations import ConversationList, ConversationView

Limit = Annotated[
    int, Field(description="At most this many, most recent first", ge=1, le=100, strict=True)
]


class Deleted(BaseModel):
    id: str
    deleted: bool


def tools(env: ToolEnv) -> list[Tool]:
    async def get_conversation(
        ctx: Context[Any, Any], conversation_id: ConversationId
    ) -> ConversationView:
        return await env.call(ctx, conversations.get_conversation, conversation_id)

    async def list_conversations(
        ctx: Context[Any, Any], instance_id: InstanceId, limit: Limit = 20
    ) -> ConversationList:
        return await env.call(ctx, conversations.list_conversations, instance_id, limit=limit)

    async def delete_conversation(
        ctx: Context[Any, Any], conversation_id: ConversationId
    ) -> Deleted:
        done = await env.call(ctx, conversations.delete_conversation, conversation_id)
        return Deleted(id=done["id"], deleted=done["deleted"])

    return [
        Tool.from_function(
            get_conversation,
            meta=scope("inference"),
            title="Get a conversation",
            description="The messages an instance provisioned with history=true kept for "
            "one conversation, oldest first (the oldest turns are dropped past the limits).",
            annotations=READ_ONLY,
        ),
        Tool.from_function(
            list_conversations,
            meta=scope("inference"),
            title="List conversations",
            description="An instance's kept conversations (ids, sizes and times, no text), "
            "most recently used first. Empty for instances without history.",
            annotations=READ_ONLY,
        ),
        Tool.from_function(
            delete_conversation,
            meta=scope("inference"),
            title="Delete a conversation",
            description="Delete a kept conversation and every message in it, at once and "
            "for good. Destroying the instance deletes all of them.",
            annotations=ToolAnnotations(
                read_only_hint=False,
                destructive_hint=True,
                idempotent_hint=False,
                open_world_hint=False,
            ),
        ),
    ]
