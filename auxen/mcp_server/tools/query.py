"""query_instance: ask a ready instance's model and get the answer with token counts."""

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from pydantic import Field

from auxen.mcp_server.args import ConversationId, InstanceId, TopK
from auxen.mcp_server.server import ACTS, ToolEnv, scope
from auxen.tools import query
from auxen.tools.query import MAX_TOKENS, ChatMessage, QueryRequest, QueryResult

Messages = Annotated[
    list[ChatMessage] | None,
    Field(
        description='Chat messages, oldest first, e.g. [{"role": "user", "content": '
        '"..."}]. Give either messages or prompt.',
        min_length=1,
        max_length=500,
    ),
]
Prompt = Annotated[
    str | None,
    Field(
        description="Plain text to continue (raw completion, no chat template). Give "
        "either messages or prompt.",
        min_length=1,
        max_length=1_000_000,
        strict=True,
    ),
]
MaxTokens = Annotated[
    int, Field(description="Most tokens to generate", ge=1, le=MAX_TOKENS, strict=True)
]
Temperature = Annotated[
    float | None, Field(description="Sampling temperature; 0 is greedy", ge=0, le=2, strict=True)
]
TopP = Annotated[float | None, Field(description="Nucleus sampling", gt=0, le=1, strict=True)]
Stop = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=200, strict=True)]] | None,
    Field(description="Up to 4 sequences that end the answer", min_length=1, max_length=4),
]
Retrieval = Annotated[
    bool,
    Field(
        description="Retrieve passages from the instance's attached knowledge bases for "
        "the latest user turn (on by default; no effect without attached ones)",
        strict=True,
    ),
]
Seed = Annotated[
    int | None, Field(description="Seed for repeatable sampling", ge=0, le=2**31 - 1, strict=True)
]


def tools(env: ToolEnv) -> list[Tool]:
    async def query_instance(
        ctx: Context[Any, Any],
        instance_id: InstanceId,
        messages: Messages = None,
        prompt: Prompt = None,
        max_tokens: MaxTokens = 256,
        temperature: Temperature = None,
        top_p: TopP = None,
        stop: Stop = None,
        seed: Seed = None,
        retrieval: Retrieval = True,
        top_k: TopK = 5,
        conversation_id: ConversationId | None = None,
    ) -> QueryResult:
        req = env.parse(
            QueryRequest,
            {
                "instance_id": instance_id,
                "messages": messages,
                "prompt": prompt,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "stop": stop,
                "seed": seed,
                "retrieval": retrieval,
                "top_k": top_k,
                "conversation_id": conversation_id,
            },
        )
        return await env.call(ctx, query.query_instance, req)

    return [
        Tool.from_function(
            query_instance,
            meta=scope("inference"),
            title="Query an instance",
            description="Send chat messages (or a plain prompt) to a ready instance's "
            "model and get its answer with token usage. The instance must be in state "
            "ready (see get_instance). With knowledge bases attached, the best passages "
            "go to the model as numbered sources and `citations` says where each came "
            "from (retrieval=false turns this off). Prompts and answers are not stored, "
            "unless the instance was provisioned with history=true: then the exchange is "
            "kept (sealed) and conversation_id continues it in the next query.",
            annotations=ACTS,
        )
    ]
