"""Argument types shared by several tools: bounds and descriptions written for an agent.

Every argument is strict (no "5" for 5, no "yes" for true): a wrong type is an error the
agent sees, not a guess made on its behalf.
"""

from decimal import Decimal
from typing import Annotated, Any

from pydantic import Field

from auxen.config import Settings
from auxen.tools.instances import ProvisionRequest

InstanceId = Annotated[
    str,
    Field(
        description="Instance id (inst_...), as returned by provision_instance or list_instances",
        pattern=r"^inst_[A-Za-z0-9]{1,40}$",
        strict=True,
    ),
]

Model = Annotated[
    str,
    Field(
        description="Model to serve: a Hugging Face id (org/name) or a model directory "
        "listed by list_models",
        min_length=1,
        max_length=500,
        strict=True,
    ),
]

GpuType = Annotated[
    str | None,
    Field(
        description="GPU type from list_models; omit for the provider's default",
        min_length=1,
        max_length=64,
        strict=True,
    ),
]

Tier = Annotated[
    str,
    Field(
        description="'dedicated' (a single-tenant server, billed per hour) or 'shared-small' "
        "(a server shared with other workspaces, billed per token, ready at once when its "
        "model is already being served)",
        strict=True,
    ),
]


def ttl_hours(settings: Settings) -> Any:
    """Hours until automatic destruction, bounded by this server's maximum."""
    return Annotated[
        float,
        Field(
            description="Hours until the instance is destroyed automatically (it can be "
            f"destroyed earlier); at least 1 minute (0.0167), at most "
            f"{settings.max_ttl_seconds / 3600:g}",
            ge=1 / 60,
            le=settings.max_ttl_seconds / 3600,
            strict=True,
        ),
    ]


def provision_request(
    model: str,
    gpu_type: str | None,
    tier: str,
    ttl_hours: float,
    idempotency_key: str | None,
    idle_timeout_minutes: float | None = None,
    spend_cap_usd: float | None = None,
    gpu_fallbacks: list[str] | None = None,
    history: bool = False,
) -> dict[str, Any]:
    """Tool arguments in the shape of `ProvisionRequest` (ttl and idle timeout in
    seconds, the cap as an exact decimal)."""
    fields: dict[str, Any] = {
        "model": model,
        "gpu_type": gpu_type,
        "tier": tier,
        "ttl": round(ttl_hours * 3600),
        "idempotency_key": idempotency_key,
        "idle_timeout": None if idle_timeout_minutes is None else round(idle_timeout_minutes * 60),
        "spend_cap_usd": None if spend_cap_usd is None else Decimal(str(spend_cap_usd)),
        "gpu_fallbacks": gpu_fallbacks,
        "history": history,
    }
    assert set(fields) <= set(ProvisionRequest.model_fields)
    return fields


KnowledgeBaseId = Annotated[
    str,
    Field(
        description="Knowledge base id (kb_...), as returned by create_knowledge_base or "
        "list_knowledge_bases",
        pattern=r"^kb_[A-Za-z0-9]{1,40}$",
        strict=True,
    ),
]

DocumentId = Annotated[
    str,
    Field(
        description="Document id (doc_...), as returned by add_documents or list_documents",
        pattern=r"^doc_[A-Za-z0-9]{1,40}$",
        strict=True,
    ),
]

TopK = Annotated[
    int,
    Field(description="How many passages to retrieve (1-20)", ge=1, le=20, strict=True),
]

ConversationId = Annotated[
    str,
    Field(
        description="Conversation id (conv_...), as returned by query_instance on an "
        "instance provisioned with history=true",
        pattern=r"^conv_[A-Za-z0-9]{1,40}$",
        strict=True,
    ),
]
