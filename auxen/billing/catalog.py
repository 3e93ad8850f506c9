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


GPU_TYPES: dict[str, GpuType] = {
    g.id: g
    for g in (
        GpuType("cpu", "this host's CPU (vLLM CPU build)", 0, frozenset({"local"})),
        GpuType("local-gpu", "this host's own GPU", 0, frozenset({"local"})),
        GpuType("L4", "NVIDIA L4 24 GB", 800_000, frozenset({"runpod"})),
        GpuType("A100-80GB", "NVIDIA A100 80 GB", 1_990_000, frozenset({"runpod"})),
        GpuType("H100-80GB", "NVIDIA H100 80 GB", 3_290_000, frozenset({"runpod"})),
    )
}


def gpu_types_for(provider: str) -> list[GpuType]:
    return [g for g in GPU_TYPES.values() if provider in g.providers]
