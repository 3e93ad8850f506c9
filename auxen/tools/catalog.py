"""What can be provisioned here, and what a given request would cost, before committing."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from auxen.billing.catalog import KNOWN_MODELS, OFFERED_TIERS, SHARED_SMALL_LABEL, fits
from auxen.inference.shared import SHARED_TIER
from auxen.runtime import Runtime
from auxen.tools.context import Caller
from auxen.tools.instances import ProvisionRequest, validate_request
from auxen.tools.permissions import Permission
from auxen.tools.views import micros_to_usd


class GpuOffer(BaseModel):
    id: str = Field(description="Pass as gpu_type")
    description: str
    memory_gb: int | None = Field(description="GPU memory; null for this host's own hardware")
    hourly_price_micros: int
    hourly_price_usd: str
    typical_ready_seconds: int = Field(description="Rough time from provision to ready")


class ModelOffer(BaseModel):
    model: str = Field(description="Pass as model")
    description: str
    gpu_types: list[str] = Field(description="GPU types this model fits on")


class TokenPricing(BaseModel):
    label: str
    input_micros_per_million_tokens: int
    output_micros_per_million_tokens: int


class Catalog(BaseModel):
    provider: str
    tiers: list[str] = Field(description="Tiers that can be provisioned now")
    shared_small: TokenPricing = Field(description="The per-token tier's prices")
    gpu_types: list[GpuOffer]
    models: list[ModelOffer] = Field(description="Models known to fit; others may be given")
    note: str


class Quote(BaseModel):
    model: str
    gpu_type: str
    tier: str
    provider: str
    hourly_price_micros: int
    hourly_price_usd: str
    ttl_seconds: int = Field(description="The instance is destroyed after this long")
    max_cost_micros: int = Field(description="Cost if it runs for the whole TTL")
    max_cost_usd: str
    typical_ready_seconds: int
    per_token: TokenPricing | None = Field(
        description="For shared-small: billed per token at these prices (no hourly charge)"
    )


def _local_models(models_dir: Path) -> list[Path]:
    if not models_dir.is_dir():
        return []
    return sorted(p for p in models_dir.iterdir() if (p / "config.json").is_file())


async def list_models(rt: Runtime, caller: Caller) -> Catalog:
    caller.require(Permission.CATALOG_READ)
    provider = rt.provider.name
    gpus = rt.prices.offered(provider)
    offers = [
        GpuOffer(
            id=g.id,
            description=g.description,
            memory_gb=g.memory_gb,
            hourly_price_micros=g.hourly_price_micros,
            hourly_price_usd=micros_to_usd(g.hourly_price_micros),
            typical_ready_seconds=g.typical_ready_s,
        )
        for g in gpus
    ]
    if provider == "local":
        models = [
            ModelOffer(
                model=str(path),
                description=f"model directory {path.name} on this server",
                gpu_types=[g.id for g in gpus],
            )
            for path in _local_models(rt.settings.resolved_models_dir)
        ]
        note = (
            "The local provider runs vLLM on this host. model may also be any Hugging Face "
            "id already in this host's Hugging Face cache, or another absolute directory "
            "holding a model's config.json and weights."
        )
    else:
        models = [
            ModelOffer(
                model=m.id,
                description=m.description,
                gpu_types=[g.id for g in gpus if fits(m, g)],
            )
            for m in KNOWN_MODELS.values()
        ]
        note = "Other Hugging Face ids can be given; pick a GPU with enough memory for them."
    return Catalog(
        provider=provider,
        tiers=list(OFFERED_TIERS),
        shared_small=_token_pricing(rt),
        gpu_types=offers,
        models=models,
        note=note,
    )


def _token_pricing(rt: Runtime) -> TokenPricing:
    return TokenPricing(
        label=SHARED_SMALL_LABEL,
        input_micros_per_million_tokens=rt.prices.shared_small.input_micros_per_million,
        output_micros_per_million_tokens=rt.prices.shared_small.output_micros_per_million,
    )


async def quote_instance(rt: Runtime, caller: Caller, req: ProvisionRequest) -> Quote:
    """The price of `req` if it were provisioned now; changes nothing."""
    caller.require(Permission.CATALOG_READ)
    gpu_type, ttl = validate_request(rt, req)
    gpu = rt.prices.gpu_types[gpu_type]
    shared = req.tier == SHARED_TIER
    hourly = 0 if shared else gpu.hourly_price_micros
    max_cost = round(hourly * ttl / 3600)
    return Quote(
        model=req.model,
        gpu_type=gpu_type,
        tier=req.tier,
        provider=rt.provider.name,
        hourly_price_micros=hourly,
        hourly_price_usd=micros_to_usd(hourly),
        ttl_seconds=ttl,
        max_cost_micros=max_cost,
        max_cost_usd=micros_to_usd(max_cost),
        typical_ready_seconds=gpu.typical_ready_s,
        per_token=_token_pricing(rt) if shared else None,
    )
