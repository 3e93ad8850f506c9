"""Asking an instance one question: chat messages or a plain prompt in, the answer and
its token counts out. The text lives only in memory for the length of the call.

When knowledge bases are attached to the instance, the passages that best match the
latest user turn go to the model as numbered sources, and the result cites them."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from auxen.inference.gateway import upstream_error
from auxen.inference.upstream import UpstreamError
from auxen.kb.retrieval import sources_block
from auxen.runtime import Runtime
from auxen.tools.context import Caller
from auxen.tools.conversations import CONVERSATION_ID_PATTERN, history_for, record_turn
from auxen.tools.errors import InvalidArgument, TooLarge, Unavailable
from auxen.tools.kb import MAX_TOP_K, retrieve_for_instance
from auxen.tools.views import Citation, Passage

MAX_TOKENS = 8192


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=1_000_000)


StopSequence = Annotated[str, Field(min_length=1, max_length=200)]


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instance_id: str = Field(min_length=1, max_length=64)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=500)
    prompt: str | None = Field(default=None, min_length=1, max_length=1_000_000)
    max_tokens: int = Field(default=256, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: list[StopSequence] | None = Field(default=None, min_length=1, max_length=4)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    retrieval: bool = True
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K)
    conversation_id: str | None = Field(default=None, pattern=CONVERSATION_ID_PATTERN)

    @model_validator(mode="after")
    def _one_input(self) -> QueryRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of messages (chat) or prompt (plain completion)")
        return self

    @property
    def text_bytes(self) -> int:
        texts = [m.content for m in self.messages] if self.messages else [self.prompt or ""]
        return sum(len(t.encode()) for t in texts)


class TokenUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class QueryResult(BaseModel):
    instance_id: str
    model: str
    text: str = Field(description="The model's answer")
    finish_reason: str | None = Field(description="stop, or length when max_tokens cut it off")
    usage: TokenUsage
    latency_ms: float
    citations: list[Citation] = Field(
        description="The numbered sources the model was given from attached knowledge "
        "bases ([n] in the answer refers to source n); empty without retrieval"
    )
    conversation_id: str | None = Field(
        default=None,
        description="For instances provisioned with history: the conversation this "
        "exchange was kept in; pass it with the next query to continue. null otherwise",
    )


def latest_user_turn(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message (string content, or OpenAI text parts)."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
        return ""
    return ""


def with_sources(messages: list[dict[str, Any]], passages: list[Passage]) -> list[dict[str, Any]]:
    """The conversation with the sources in its system message (added if it has none:
    some chat templates accept only one system message, and only first)."""
    block = sources_block([(p.source, p.title, p.text) for p in passages])
    if (
        messages
        and messages[0].get("role") == "system"
        and isinstance(messages[0].get("content"), str)
    ):
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{block}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def citations_of(passages: list[Passage]) -> list[Citation]:
    return [Citation.model_validate(p.model_dump(exclude={"text"})) for p in passages]


async def query_instance(rt: Runtime, caller: Caller, req: QueryRequest) -> QueryResult:
    if req.text_bytes > rt.settings.max_body_bytes:
        raise TooLarge(
            f"the input is {req.text_bytes} bytes; the limit is {rt.settings.max_body_bytes}",
            param="messages" if req.messages else "prompt",
        )
    target = await rt.gateway.authorize(caller, req.instance_id)
    body: dict[str, Any] = {"model": target.model, "max_tokens": req.max_tokens}
    messages = [m.model_dump() for m in req.messages] if req.messages is not None else None
    keep = _keeps_history(target.history, req)
    new_turns: list[dict[str, str]] = []
    if keep and messages is not None:
        # System messages steer this query only; the conversation keeps the others.
        system = [m for m in messages if m["role"] == "system"]
        new_turns = [m for m in messages if m["role"] != "system"]
        earlier = (
            await history_for(
                rt, target.workspace_id, target.livemode, target.instance_id, req.conversation_id
            )
            if req.conversation_id is not None
            else []
        )
        messages = [*system, *earlier, *new_turns]
    passages: list[Passage] = []
    if req.retrieval:
        turn = latest_user_turn(messages) if messages is not None else req.prompt or ""
        passages = await retrieve_for_instance(
            rt, target.workspace_id, target.instance_id, turn, req.top_k
        )
    if messages is not None:
        path = "chat/completions"
        body["messages"] = with_sources(messages, passages) if passages else messages
    else:
        path = "completions"
        block = sources_block([(p.source, p.title, p.text) for p in passages])
        body["prompt"] = f"{block}\n\n{req.prompt}" if passages else req.prompt
    for name in ("temperature", "top_p", "stop", "seed"):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    started = time.perf_counter()
    try:
        async with rt.fairness.admit(caller):
            done = await rt.gateway.complete(caller, target, path, body, started=started)
    except UpstreamError:
        raise Unavailable(
            f"instance {req.instance_id} is not answering; check its state with get_instance",
            param="instance_id",
        ) from None
    if done.status >= 400:
        _raise_for_upstream(req.instance_id, done.status, done.content)
    try:
        payload = json.loads(done.content)
        choice = payload["choices"][0]
        text = choice["message"]["content"] if path == "chat/completions" else choice["text"]
        usage = payload.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        finish_reason = choice.get("finish_reason")
        if not isinstance(text, str | None) or not isinstance(finish_reason, str | None):
            raise TypeError
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise Unavailable(
            f"instance {req.instance_id} gave an answer that is not an OpenAI completion"
        ) from None
    conversation_id = None
    if keep:
        conversation_id = await record_turn(
            rt, target.workspace_id, target.livemode, target.instance_id, req.conversation_id,
            [*new_turns, {"role": "assistant", "content": text or ""}],
        )  # fmt: skip
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    return QueryResult(
        instance_id=target.instance_id,
        model=target.model,
        text=text or "",
        finish_reason=finish_reason,
        usage=TokenUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
        latency_ms=latency_ms,
        citations=citations_of(passages),
        conversation_id=conversation_id,
    )


def _keeps_history(history: bool, req: QueryRequest) -> bool:
    """Whether this query is part of a kept conversation (a typed error when it cannot be)."""
    if req.conversation_id is not None and not history:
        raise InvalidArgument(
            f"instance {req.instance_id} was provisioned without history, so it keeps no "
            "conversations; omit conversation_id (send the whole conversation in messages), "
            "or provision an instance with history=true",
            param="conversation_id",
        )
    if req.conversation_id is not None and req.messages is None:
        raise InvalidArgument(
            "conversations continue with chat messages; send messages instead of prompt",
            param="conversation_id",
        )
    return history and req.messages is not None


def _raise_for_upstream(instance_id: str, status: int, content: bytes) -> None:
    message, param, _ = upstream_error(content)
    if status in (401, 403):
        raise Unavailable(f"instance {instance_id} refused the control plane's credentials")
    if status >= 500 or message is None:
        raise Unavailable(
            f"instance {instance_id}'s inference server failed (HTTP {status})"
            + (f": {message}" if message else "")
        )
    raise InvalidArgument(f"the instance rejected the request: {message}", param=param)
