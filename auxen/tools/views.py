"""What callers see of stored objects: the same dictionaries for REST, MCP and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from auxen.store.models import ApiKey, Instance, InstanceState, KeyKind, Role, as_utc


def _iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return as_utc(ts).isoformat().replace("+00:00", "Z")


def micros_to_usd(micros: int) -> str:
    return f"{micros / 1_000_000:.6f}".rstrip("0").rstrip(".") if micros else "0"


class InstanceView(BaseModel):
    """An instance as every caller sees it (REST, MCP, CLI)."""

    id: str = Field(description="Instance id (inst_...)")
    object: Literal["instance"] = "instance"
    livemode: bool = Field(description="False for test-mode instances")
    model: str = Field(description="The model this instance serves")
    gpu_type: str
    tier: str
    provider: str = Field(description="Where the instance runs (local, runpod)")
    state: InstanceState = Field(
        description="pending -> provisioning -> starting -> ready; then stopping -> "
        "destroyed, or failed"
    )
    endpoint: str = Field(description="OpenAI-compatible base URL for this instance")
    hourly_price_micros: int = Field(description="Price per hour in micro-dollars")
    hourly_price_usd: str
    ttl_seconds: int
    expires_at: str | None = Field(description="When it is destroyed automatically (UTC)")
    idempotency_key: str | None
    created_at: str | None
    ready_at: str | None
    destroyed_at: str | None
    destroy_reason: str | None = Field(
        description="requested, ttl_expired, idle_timeout, budget_exceeded:<limit>, ..."
    )
    idle_timeout_s: int | None = Field(description="Destroyed after this long without a query")
    last_query_at: str | None
    last_error: str | None = Field(description="Why it failed, when it did")
    status_detail: str | None = Field(
        default=None, description="Where a bring-up stands (image pull, model load, ...)"
    )
    history: bool = Field(
        default=False, description="Keeps conversations (query_instance conversation_id)"
    )


def instance_view(instance: Instance, base_url: str) -> InstanceView:
    return InstanceView(
        id=instance.id,
        livemode=instance.livemode,
        model=instance.model,
        gpu_type=instance.gpu_type,
        tier=instance.tier,
        provider=instance.provider,
        state=instance.state,
        endpoint=f"{base_url}/v1/instances/{instance.id}",
        hourly_price_micros=instance.hourly_price_micros,
        hourly_price_usd=micros_to_usd(instance.hourly_price_micros),
        ttl_seconds=instance.ttl_seconds,
        expires_at=_iso(instance.expires_at),
        idempotency_key=instance.idempotency_key,
        created_at=_iso(instance.created_at),
        ready_at=_iso(instance.ready_at),
        destroyed_at=_iso(instance.destroyed_at),
        destroy_reason=instance.destroy_reason,
        idle_timeout_s=instance.idle_timeout_s,
        last_query_at=_iso(instance.last_query_at),
        last_error=instance.last_error,
        status_detail=instance.status_detail,
        history=instance.history,
    )


class InstanceUsage(BaseModel):
    instance_id: str
    model: str
    state: InstanceState
    requests: int = Field(description="Inference calls made")
    prompt_tokens: int
    completion_tokens: int
    gpu_seconds: float = Field(description="Seconds the instance has existed in the window")
    cost_micros: int = Field(description="GPU time cost in micro-dollars")
    cost_usd: str
    charged_micros: int = Field(description="What the ledger charged (GPU ticks, tokens)")


class UsageSummary(BaseModel):
    object: Literal["usage"] = "usage"
    since: str | None = Field(description="Start of the window (UTC); null means all time")
    until: str = Field(description="End of the window: now (UTC)")
    requests: int
    prompt_tokens: int
    completion_tokens: int
    gpu_seconds: float
    cost_micros: int
    cost_usd: str
    instances: list[InstanceUsage]


@dataclass(frozen=True)
class KeyStanding:
    """Where a key stands now: who made it, what it may do, and whether it works."""

    created_by: str | None  # the creator's email (their id if they have no user row)
    effective_role: Role | None  # None: an instance key, or one that no longer works
    status: Literal["active", "revoked", "disabled"]
    why: str | None  # why it is disabled


def key_view(key: ApiKey, standing: KeyStanding | None = None) -> dict[str, Any]:
    """`role` is what the key was made with; `effective_role` what it may do now (the
    lower of that and its creator's current role)."""
    return {
        "id": key.id,
        "object": "api_key",
        "kind": key.kind.value,
        "role": key.role.value if key.kind is KeyKind.ACCOUNT else None,
        "effective_role": standing.effective_role.value
        if standing and standing.effective_role
        else None,
        "livemode": key.livemode,
        "instance_id": key.instance_id,
        "name": key.name,
        "prefix": key.display_prefix,
        "created_by_user_id": key.created_by_user_id,
        "created_by": standing.created_by if standing else None,
        "created_via": key.created_via,
        "status": standing.status if standing else None,
        "disabled_at": _iso(key.disabled_at),
        "disabled_reason": standing.why if standing else key.disabled_reason,
        "created_at": _iso(key.created_at),
        "last_used_at": _iso(key.last_used_at),
        "revoked_at": _iso(key.revoked_at),
    }


class KnowledgeBaseView(BaseModel):
    id: str = Field(description="Knowledge base id (kb_...)")
    object: Literal["knowledge_base"] = "knowledge_base"
    livemode: bool
    name: str
    embedding_model: str = Field(description="The model its chunks were embedded with")
    chunk_tokens: int = Field(description="Chunk size, in the embedding model's tokens")
    documents: int = Field(description="Documents it holds")
    chunks: int = Field(description="Chunks its documents were split into")
    created_at: str | None


class DocumentView(BaseModel):
    id: str = Field(description="Document id (doc_...)")
    object: Literal["document"] = "document"
    knowledge_base_id: str
    title: str
    content_type: str
    bytes: int = Field(description="Size of the uploaded document")
    chunks: int
    status: str = Field(description="ingesting, then ready")
    created_at: str | None


class AttachmentView(BaseModel):
    object: Literal["attachment"] = "attachment"
    instance_id: str
    knowledge_base_id: str
    attached: bool = Field(description="False once detached")
    created_at: str | None


class Citation(BaseModel):
    """Where one numbered source given to the model came from."""

    source: int = Field(description="The number [n] the model was given this passage under")
    knowledge_base_id: str
    document_id: str
    title: str
    chunk: int = Field(description="The chunk's position in its document, from 0")
    score: float = Field(description="Reciprocal-rank-fusion score of the hybrid search")
    similarity: float | None = Field(description="Cosine similarity to the query, if ranked")


class Passage(Citation):
    text: str = Field(description="The chunk's text")
