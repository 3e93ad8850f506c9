"""Conversation history, for instances provisioned with `history: true` (off by default:
without it nothing of a conversation is kept anywhere).

Each query in a conversation stores one turn: the messages it added and the answer,
sealed under the workspace's key (XSalsa20-Poly1305, `auxen.auth.sealing`) together with
the conversation's id, so a turn never opens under another workspace or conversation.
The next query in the conversation is sent with the turns before it. A conversation
keeps at most `AUXEN_HISTORY_MAX_TURNS` turns and `AUXEN_HISTORY_MAX_TOKENS` tokens
(counted roughly, four bytes of text to a token); the oldest turns go first. Destroying
(or losing) the instance deletes every conversation it held.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from auxen.auth.sealing import UnsealError, seal, unseal
from auxen.runtime import Runtime
from auxen.store.models import Conversation, ConversationTurn, Instance, InstanceState
from auxen.tools.context import Caller
from auxen.tools.errors import InvalidArgument, NotFound
from auxen.tools.instances import get_instance
from auxen.tools.permissions import Permission
from auxen.tools.views import _iso

CONVERSATION_ID_PATTERN = r"^conv_[A-Za-z0-9]{1,40}$"


class HistoryMessage(BaseModel):
    role: Literal["user", "assistant"]
    content: str


class ConversationView(BaseModel):
    id: str = Field(description="Conversation id (conv_...)")
    object: Literal["conversation"] = "conversation"
    instance_id: str
    livemode: bool
    turns: int = Field(description="Exchanges kept (the oldest are dropped past the limit)")
    tokens: int = Field(description="Rough size of what is kept, in tokens")
    created_at: str | None
    updated_at: str | None
    messages: list[HistoryMessage] | None = Field(
        default=None, description="The kept messages, oldest first (get_conversation only)"
    )


class ConversationList(BaseModel):
    conversations: list[ConversationView]


def rough_tokens(text: str) -> int:
    return max(1, math.ceil(len(text.encode()) / 4))


def _view(row: Conversation, messages: list[HistoryMessage] | None = None) -> ConversationView:
    return ConversationView(
        id=row.id,
        instance_id=row.instance_id,
        livemode=row.livemode,
        turns=row.turns,
        tokens=row.tokens,
        created_at=_iso(row.created_at),
        updated_at=_iso(row.updated_at),
        messages=messages,
    )


def _not_found(conversation_id: str) -> NotFound:
    return NotFound(f"no conversation {conversation_id}", param="conversation_id")


async def _conversation(
    rt: Runtime, workspace_id: str, livemode: bool, conversation_id: str
) -> Conversation:
    async with rt.db.scoped(workspace_id) as session:
        row = await session.get(Conversation, conversation_id)
    if row is None or row.livemode != livemode:
        raise _not_found(conversation_id)
    return row


async def _messages(rt: Runtime, row: Conversation) -> list[dict[str, str]]:
    async with rt.db.scoped(row.workspace_id) as session:
        turns = (
            await session.exec(
                select(ConversationTurn)
                .where(col(ConversationTurn.conversation_id) == row.id)
                .order_by(col(ConversationTurn.seq))
            )
        ).all()
    messages: list[dict[str, str]] = []
    for turn in turns:
        try:
            opened = json.loads(unseal(rt.settings.master_key_bytes, row.workspace_id, turn.sealed))
        except (UnsealError, ValueError):
            continue  # never happens unless the row was tampered with: skip it
        if opened.get("conversation_id") != row.id:
            continue  # a turn moved from another conversation does not count
        messages.extend(opened["messages"])
    return messages


async def history_for(
    rt: Runtime, workspace_id: str, livemode: bool, instance_id: str, conversation_id: str
) -> list[dict[str, str]]:
    """The kept messages of a conversation of this instance, oldest first; NotFound for
    a conversation of another instance, mode or workspace."""
    row = await _conversation(rt, workspace_id, livemode, conversation_id)
    if row.instance_id != instance_id:
        raise _not_found(conversation_id)
    return await _messages(rt, row)


async def record_turn(
    rt: Runtime,
    workspace_id: str,
    livemode: bool,
    instance_id: str,
    conversation_id: str | None,
    messages: list[dict[str, str]],
) -> str | None:
    """Keep one exchange (sealed), trim the conversation to its bounds; its id (a new
    conversation when `conversation_id` is None), or None when the instance was destroyed
    while the query ran (its conversations are gone with it)."""
    for _ in range(3):  # two queries of one conversation at once: the later one retries
        try:
            return await _record(rt, workspace_id, livemode, instance_id, conversation_id, messages)
        except IntegrityError:
            continue
    raise InvalidArgument(
        "too many queries at once in this conversation; send them one after another",
        param="conversation_id",
    )


async def _record(
    rt: Runtime,
    workspace_id: str,
    livemode: bool,
    instance_id: str,
    conversation_id: str | None,
    messages: list[dict[str, str]],
) -> str | None:
    now = datetime.now(UTC)
    settings = rt.settings
    async with rt.db.scoped(workspace_id) as session:
        instance = await session.get(Instance, instance_id)
        if instance is None or instance.state is not InstanceState.READY:
            return None
        row = await session.get(Conversation, conversation_id) if conversation_id else None
        if conversation_id is not None and row is None:
            raise _not_found(conversation_id)  # deleted while the query ran
        if row is None:
            row = Conversation(
                workspace_id=workspace_id, instance_id=instance_id, livemode=livemode,
                created_at=now, updated_at=now,
            )  # fmt: skip
            session.add(row)
            await session.flush()
        last = (
            await session.exec(
                select(ConversationTurn.seq)
                .where(col(ConversationTurn.conversation_id) == row.id)
                .order_by(col(ConversationTurn.seq).desc())
                .limit(1)
            )
        ).first()
        plaintext = json.dumps({"conversation_id": row.id, "messages": messages})
        tokens = sum(rough_tokens(m["content"]) for m in messages)
        session.add(
            ConversationTurn(
                workspace_id=workspace_id,
                conversation_id=row.id,
                seq=(last or 0) + 1,
                tokens=tokens,
                sealed=seal(settings.master_key_bytes, workspace_id, plaintext),
                created_at=now,
            )
        )
        await session.flush()
        kept = (
            await session.exec(
                select(ConversationTurn)
                .where(col(ConversationTurn.conversation_id) == row.id)
                .order_by(col(ConversationTurn.seq).desc())
            )
        ).all()
        total_turns = total_tokens = 0
        for turn in kept:
            newest = total_turns == 0
            if not newest and (
                total_turns + 1 > settings.history_max_turns
                or total_tokens + turn.tokens > settings.history_max_tokens
            ):
                await session.delete(turn)
                continue
            total_turns += 1
            total_tokens += turn.tokens
        row.turns, row.tokens, row.updated_at = total_turns, total_tokens, now
        session.add(row)
        await session.commit()
        return row.id


async def get_conversation(rt: Runtime, caller: Caller, conversation_id: str) -> ConversationView:
    caller.require(Permission.CONVERSATIONS)
    row = await _conversation(rt, caller.workspace_id, caller.livemode, conversation_id)
    messages = [HistoryMessage.model_validate(m) for m in await _messages(rt, row)]
    return _view(row, messages)


async def list_conversations(
    rt: Runtime, caller: Caller, instance_id: str, *, limit: int = 50
) -> ConversationList:
    caller.require(Permission.CONVERSATIONS)
    if not 1 <= limit <= 1000:
        raise InvalidArgument("limit must be between 1 and 1000", param="limit")
    instance = await get_instance(rt, caller, instance_id)
    async with caller.scoped(rt.db) as session:
        rows = (
            await session.exec(
                select(Conversation)
                .where(col(Conversation.instance_id) == instance.id)
                .order_by(col(Conversation.updated_at).desc())
                .limit(limit)
            )
        ).all()
    return ConversationList(conversations=[_view(r) for r in rows])


async def delete_conversation(rt: Runtime, caller: Caller, conversation_id: str) -> dict[str, Any]:
    """Delete a conversation and every turn it kept; repeating it is a NotFound."""
    caller.require(Permission.CONVERSATIONS)
    row = await _conversation(rt, caller.workspace_id, caller.livemode, conversation_id)
    async with caller.scoped(rt.db) as session:
        await session.exec(
            sa.delete(ConversationTurn).where(col(ConversationTurn.conversation_id) == row.id)
        )
        await session.exec(sa.delete(Conversation).where(col(Conversation.id) == row.id))
        await session.commit()
    await rt.db.scrub()
    return {"id": row.id, "object": "conversation", "deleted": True}
