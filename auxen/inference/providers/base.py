"""The provider interface: every provider implements these calls and nothing else.

The lifecycle never branches on a provider's name; it only calls `create`, `status`,
`terminate`, `list_owned` and `keep_until` (plus `describe` for progress and `logs_tail`
for failure reports), and reads `ready_timeout_s`.
"""

from __future__ import annotations

import enum
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

# The account a provider call acts in: a workspace's own provider key (BYOK), set by the
# lifecycle around the calls it makes for that workspace's instance; None: the
# deployment's account. A context variable, so concurrent tasks never mix accounts.
PROVIDER_ACCOUNT: ContextVar[str | None] = ContextVar("provider_account", default=None)


class ProviderError(RuntimeError):
    """The provider could not do what was asked; the message is safe to show the user."""


@dataclass(frozen=True)
class LaunchSpec:
    instance_id: str
    model: str
    gpu_type: str
    served_model_name: str
    upstream_api_key: str = field(repr=False)
    # GPU types to try, in order, when `gpu_type` has no capacity.
    gpu_fallbacks: tuple[str, ...] = ()
    # A Hugging Face token for gated models: the workspace's own (BYOK, unsealed by the
    # caller just for this launch) when it has one; None uses the deployment's.
    hf_token: str | None = field(default=None, repr=False)
    # The end of the instance's paid GPU time, when it is paid by the hour: the resource
    # stops itself there unless `keep_until` moves it (None: no such deadline).
    paid_until: datetime | None = None

    @property
    def gpu_candidates(self) -> list[str]:
        return list(dict.fromkeys((self.gpu_type, *self.gpu_fallbacks)))


@dataclass(frozen=True)
class Resource:
    provider_id: str
    endpoint: str  # base URL of the upstream OpenAI-compatible server, without /v1
    gpu_type: str | None = None  # the GPU type it got, when a fallback was used


class ResourceStatus(enum.StrEnum):
    RUNNING = "running"  # the resource exists; its server may still be warming up
    EXITED = "exited"  # it existed and stopped on its own (crash, OOM, bad model)
    GONE = "gone"  # the provider knows nothing of it


@dataclass(frozen=True)
class OwnedResource:
    instance_id: str
    provider_id: str
    endpoint: str
    # False: what is left of a resource whose server is gone (a worker that outlived it);
    # it only ever needs ending.
    running: bool = True


class Provider(Protocol):
    name: str
    # True when calls may act in a workspace's own account (PROVIDER_ACCOUNT).
    accounts_per_workspace: bool
    # How long a new resource may take to answer (a GPU pod pulling a large image: long).
    ready_timeout_s: float

    async def create(self, spec: LaunchSpec) -> Resource:
        """Create the resource, or find the one an earlier, interrupted call for the same
        instance already created (idempotent per instance id)."""
        ...

    async def status(self, provider_id: str) -> ResourceStatus: ...

    async def describe(self, provider_id: str) -> str:
        """One line on where the resource is in its start-up, for progress reports."""
        ...

    async def terminate(self, provider_id: str, instance_id: str) -> None:
        """Stop the resource and delete everything it held. Idempotent."""
        ...

    async def list_owned(self) -> list[OwnedResource]: ...

    async def keep_until(self, provider_id: str, instance_id: str, paid_until: datetime) -> None:
        """Move the resource's own deadline: it stops by itself at `paid_until` unless
        this is called again, whether or not a control plane is running."""
        ...

    async def close(self) -> None: ...

    async def logs_tail(self, provider_id: str, instance_id: str, lines: int = 30) -> str: ...
