"""The provider interface: every provider implements these four calls and nothing else.

The lifecycle never branches on a provider's name; it only calls `create`, `status`,
`terminate` and `list_owned` (plus `logs_tail` for failure reports).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class ProviderError(RuntimeError):
    """The provider could not do what was asked; the message is safe to show the user."""


@dataclass(frozen=True)
class LaunchSpec:
    instance_id: str
    model: str
    gpu_type: str
    served_model_name: str
    upstream_api_key: str


@dataclass(frozen=True)
class Resource:
    provider_id: str
    endpoint: str  # base URL of the upstream OpenAI-compatible server, without /v1


class ResourceStatus(enum.StrEnum):
    RUNNING = "running"  # the resource exists; its server may still be warming up
    EXITED = "exited"  # it existed and stopped on its own (crash, OOM, bad model)
    GONE = "gone"  # the provider knows nothing of it


@dataclass(frozen=True)
class OwnedResource:
    instance_id: str
    provider_id: str
    endpoint: str


class Provider(Protocol):
    name: str

    async def create(self, spec: LaunchSpec) -> Resource: ...

    async def status(self, provider_id: str) -> ResourceStatus: ...

    async def terminate(self, provider_id: str, instance_id: str) -> None:
        """Stop the resource and delete everything it held. Idempotent."""
        ...

    async def list_owned(self) -> list[OwnedResource]: ...

    async def logs_tail(self, provider_id: str, instance_id: str, lines: int = 30) -> str: ...
