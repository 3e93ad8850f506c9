"""What the shared-small tier offers, and what provisioning it costs up front.

A shared host is the operator's GPU, paid for only by the tokens of the instances it
serves, so the tier serves only the models the operator lists (`[shared_small.models]`
in the prices file, each with the GPU type its host runs on): no caller picks a model or
a GPU for it. A deployment that lists none serves, on the `local` provider, the models on
its own disk (the self-hosted default) and, on a cloud provider, nothing. Provisioning
needs the funds for a first query, reserved (then released) like a dedicated instance's
first window, so a workspace without credit cannot start a host.
"""

from __future__ import annotations

from auxen.billing.ledger import Spend
from auxen.billing.meter import TOKENS
from auxen.runtime import Runtime
from auxen.store.models import Instance
from auxen.tools.errors import InvalidArgument


def shared_gpu_for(
    rt: Runtime, model: str, gpu_type: str | None, gpu_fallbacks: list[str] | None
) -> str:
    """The GPU type a shared-small instance of `model` runs on; InvalidArgument (naming
    the field) for a model the operator does not list or a GPU the caller picked."""
    listed = rt.prices.shared_models
    if listed is None:
        if rt.provider.name != "local":
            raise InvalidArgument(
                "this server lists no shared-small models; use tier 'dedicated'", param="tier"
            )
        return gpu_type or rt.prices.offered(rt.provider.name)[0].id
    if model not in listed:
        offered = ", ".join(sorted(listed)) or "none"
        raise InvalidArgument(
            f"shared-small serves only the models this server lists: {offered}", param="model"
        )
    if gpu_type not in (None, listed[model]):
        raise InvalidArgument(
            f"shared-small runs {model} on {listed[model]}; leave gpu_type out",
            param="gpu_type",
        )
    if gpu_fallbacks:
        raise InvalidArgument("shared-small takes no gpu_fallbacks", param="gpu_fallbacks")
    return listed[model]


async def reserve_first_query(rt: Runtime, instance: Instance) -> str | None:
    """Hold what one query at the default `max_tokens` costs (OverBudget when the balance
    or a cap cannot cover it); the caller releases it once the instance exists."""
    spend = Spend(instance.workspace_id, instance.livemode, instance.id, TOKENS, instance.client_id)
    cost = rt.prices.shared_small.cost(0, rt.settings.default_max_tokens)
    return await rt.ledger.reserve(spend, max(cost, 1))
