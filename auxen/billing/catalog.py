"""The price catalog: which GPU types and tiers exist, who offers them, and at what price.

Prices are integers, never floats: micro-dollars per hour (1 USD = 1_000_000) for GPU
time, micro-dollars per million tokens for the per-token `shared-small` tier. A deployment
sets its own prices in a TOML file (`AUXEN_PRICES_FILE`):

    [gpu.L4]
    hourly_usd = "0.80"
    [shared_small]
    input_usd_per_million = "0.10"
    output_usd_per_million = "0.40"
    [shared_small.models]          # the only models shared-small serves, each on its GPU
    "Qwen/Qwen2.5-0.5B-Instruct" = "L4"
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

TIERS = ("dedicated", "shared-small")
OFFERED_TIERS = ("dedicated", "shared-small")


@dataclass(frozen=True)
class GpuType:
    id: str
    description: str
    hourly_price_micros: int
    providers: frozenset[str]
    memory_gb: int | None  # None: the host's own hardware, size unknown
    typical_ready_s: int  # rough: start to ready for a ~8B model (weights cached or pulled)


GPU_TYPES: dict[str, GpuType] = {
    g.id: g
    for g in (
        GpuType("cpu", "this host's CPU (vLLM CPU build)", 0, frozenset({"local"}), None, 90),
        GpuType("local-gpu", "this host's own GPU", 0, frozenset({"local"}), None, 120),
        GpuType("L4", "NVIDIA L4 24 GB", 800_000, frozenset({"runpod"}), 24, 300),
        GpuType("A100-80GB", "NVIDIA A100 80 GB", 1_990_000, frozenset({"runpod"}), 80, 240),
        GpuType("H100-80GB", "NVIDIA H100 80 GB", 3_290_000, frozenset({"runpod"}), 80, 240),
    )
}


@dataclass(frozen=True)
class ModelSpec:
    """A model we know fits on given hardware (weights in bf16 plus KV-cache headroom)."""

    id: str
    description: str
    min_gpu_memory_gb: int


# Offered on remote GPU providers; the local provider serves what is on its disk.
KNOWN_MODELS: dict[str, ModelSpec] = {
    m.id: m
    for m in (
        ModelSpec("Qwen/Qwen2.5-0.5B-Instruct", "Qwen 2.5 0.5B instruct: tiny, fast tests", 8),
        ModelSpec("meta-llama/Llama-3.2-3B-Instruct", "Llama 3.2 3B instruct", 16),
        ModelSpec("meta-llama/Llama-3.1-8B-Instruct", "Llama 3.1 8B instruct", 24),
        ModelSpec("Qwen/Qwen2.5-7B-Instruct", "Qwen 2.5 7B instruct", 24),
        ModelSpec("mistralai/Mistral-7B-Instruct-v0.3", "Mistral 7B instruct v0.3", 24),
        ModelSpec("Qwen/Qwen2.5-32B-Instruct", "Qwen 2.5 32B instruct", 80),
    )
}


def fits(model: ModelSpec, gpu: GpuType) -> bool:
    return gpu.memory_gb is None or gpu.memory_gb >= model.min_gpu_memory_gb


def gpu_types_for(provider: str) -> list[GpuType]:
    return [g for g in GPU_TYPES.values() if provider in g.providers]


# The shared-small tier: a logical instance on a server shared with other workspaces,
# billed per token instead of per hour.
SHARED_SMALL_LABEL = (
    "shared-small: per-token billing on a shared server (no hourly charge; about a tenth "
    "of the cost of a dedicated L4 below ~2M tokens a day)"
)


@dataclass(frozen=True)
class TokenPrices:
    input_micros_per_million: int
    output_micros_per_million: int

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Micro-dollars for these tokens, rounded up (never a free fraction)."""
        total = (
            prompt_tokens * self.input_micros_per_million
            + completion_tokens * self.output_micros_per_million
        )
        return math.ceil(total / 1_000_000)


class PriceFileError(ValueError):
    pass


@dataclass(frozen=True)
class PriceBook:
    gpu_types: dict[str, GpuType]
    shared_small: TokenPrices
    # Model -> the GPU type its shared host runs on: the operator's list of what the
    # shared-small tier serves (None: no list; see `shared_gpu_for`).
    shared_models: dict[str, str] | None = None

    def offered(self, provider: str) -> list[GpuType]:
        return [g for g in self.gpu_types.values() if provider in g.providers]


DEFAULT_SHARED_SMALL = TokenPrices(
    input_micros_per_million=100_000, output_micros_per_million=400_000
)


def load_prices(path: Path | None) -> PriceBook:
    """The default catalog with the deployment's prices from `path` applied."""
    gpus = dict(GPU_TYPES)
    shared = DEFAULT_SHARED_SMALL
    if path is None:
        return PriceBook(gpus, shared)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PriceFileError(f"cannot read prices from {path}: {exc}") from exc
    for gpu_id, entry in (data.get("gpu") or {}).items():
        if gpu_id not in gpus:
            raise PriceFileError(f"{path}: unknown GPU type {gpu_id!r}")
        hourly = _usd_micros(entry.get("hourly_usd"), f"gpu.{gpu_id}.hourly_usd")
        gpus[gpu_id] = dataclasses.replace(gpus[gpu_id], hourly_price_micros=hourly)
    if set(data.get("shared_small") or {}) - {"models"}:  # prices, not only the model list
        entry = data["shared_small"]
        shared = TokenPrices(
            _usd_micros(entry.get("input_usd_per_million"), "shared_small.input_usd_per_million"),
            _usd_micros(entry.get("output_usd_per_million"), "shared_small.output_usd_per_million"),
        )
    return PriceBook(gpus, shared, _shared_models(data, gpus, path))


def _shared_models(
    data: dict[str, object], gpus: dict[str, GpuType], path: Path
) -> dict[str, str] | None:
    entry = data.get("shared_small")
    models = entry.get("models") if isinstance(entry, dict) else None
    if models is None:
        return None
    if not isinstance(models, dict):
        raise PriceFileError(f"{path}: shared_small.models must be a table of model = GPU type")
    for model, gpu in models.items():
        if gpu not in gpus:
            raise PriceFileError(f"{path}: shared_small.models.{model!r}: unknown GPU {gpu!r}")
    return {str(model): str(gpu) for model, gpu in models.items()}


def _usd_micros(value: object, name: str) -> int:
    try:
        usd = Decimal(str(value))
    except InvalidOperation:
        raise PriceFileError(f'{name} must be a price in dollars like "0.80"') from None
    if not usd.is_finite() or usd < 0 or usd > 10_000:
        raise PriceFileError(f"{name} must be between 0 and 10000 dollars")
    return int(usd * 1_000_000)
