"""The price catalog: which GPU types and tiers exist, who offers them, and at what price.

Prices are integer micro-dollars per hour (1 USD = 1_000_000), never floats.
"""

from __future__ import annotations

from dataclasses import dataclass

TIERS = ("dedicated", "shared-small")
OFFERED_TIERS = ("dedicated",)


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
