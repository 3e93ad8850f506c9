"""Instance operations: provision, list, get, destroy."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from auxen.auth.keys import key_matches, mint_key
from auxen.auth.sealing import seal, workspace_key
from auxen.billing.catalog import GPU_TYPES, KNOWN_MODELS, OFFERED_TIERS, TIERS, fits
from auxen.inference.model_paths import ModelPathRefused, is_local_path, resolve_local_model
from auxen.inference.shared import SHARED_TIER
from auxen.runtime import Runtime
from auxen.store.models import ApiKey, CapScope, Instance, InstanceState, KeyKind
from auxen.tools import audit
from auxen.tools import billing as caps
from auxen.tools.billing import usd_to_micros
from auxen.tools.context import Caller
from auxen.tools.errors import Conflict, InvalidArgument, NotFound, OverBudget
from auxen.tools.keys import made_by, new_key_row
from auxen.tools.permissions import Permission
from auxen.tools.shared_offer import reserve_first_query, shared_gpu_for

# A Hugging Face repo id (`org/name`, or a bare name).
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}(/[\w.\-]{1,96})?$")


class ProvisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        min_length=1,
        max_length=500,
        description="Hugging Face model id (org/name) or a model directory on the server",
    )
    gpu_type: str | None = Field(
        default=None, max_length=64, description="GPU type; defaults to the provider's first"
    )
    gpu_fallbacks: list[str] | None = Field(
        default=None,
        max_length=4,
        description="GPU types to try, in order, when gpu_type has no capacity right now",
    )
    tier: str = Field(
        default="dedicated",
        description="dedicated (single-tenant, per hour) or shared-small (shared server, "
        "per token)",
    )
    ttl: int | None = Field(
        default=None, description="Seconds until the instance is destroyed automatically"
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Retrying with the same key returns the same instance",
    )
    idle_timeout: int | None = Field(
        default=None, description="Seconds without a query after which it is destroyed"
    )
    spend_cap_usd: Decimal | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        decimal_places=6,
        allow_inf_nan=False,
        description="Most this instance may ever cost, in dollars; it is destroyed before "
        "spending more",
    )
    history: bool = Field(
        default=False,
        description="Keep conversations (sealed, bounded, deleted with the instance) so "
        "query_instance can continue one by conversation_id; off by default: nothing of a "
        "conversation is stored",
    )


@dataclass(frozen=True)
class Provisioned:
    instance: Instance
    instance_key: str | None  # plaintext auxk_ key, shown once
    replayed: bool  # an earlier request with the same idempotency key made it


def validate_request(rt: Runtime, req: ProvisionRequest) -> tuple[str, int]:
    """Check `req` against what this server offers; returns (gpu_type, ttl seconds)."""
    provider = rt.provider.name
    offered = [g.id for g in rt.prices.offered(provider)]
    gpu_type = req.gpu_type or offered[0]
    for param, wanted in [("gpu_type", gpu_type)] + [
        ("gpu_fallbacks", g) for g in req.gpu_fallbacks or []
    ]:
        if wanted not in offered:
            known = "" if wanted in GPU_TYPES else "unknown GPU type; "
            raise InvalidArgument(
                f"{known}{param} {wanted!r} is not offered by provider {provider!r}; "
                f"choose from: {', '.join(offered)}",
                param=param,
            )
    if req.tier not in TIERS:
        raise InvalidArgument(f"tier must be one of: {', '.join(TIERS)}", param="tier")
    if req.tier not in OFFERED_TIERS:
        raise InvalidArgument(
            f"tier {req.tier!r} is not offered yet; use: {', '.join(OFFERED_TIERS)}",
            param="tier",
        )
    ttl = req.ttl if req.ttl is not None else rt.settings.default_ttl_seconds
    shortest, longest = rt.settings.min_lifetime_s, rt.settings.max_ttl_seconds
    if not shortest <= ttl <= longest:
        raise InvalidArgument(f"ttl must be between {shortest} and {longest} seconds", param="ttl")
    if req.idle_timeout is not None and not shortest <= req.idle_timeout <= longest:
        raise InvalidArgument(
            f"idle_timeout must be between {shortest} and {longest} seconds",
            param="idle_timeout",
        )
    if is_local_path(req.model):
        try:
            resolve_local_model(req.model, rt.settings.resolved_models_dir)
        except ModelPathRefused as exc:
            raise InvalidArgument(str(exc), param="model") from None
    elif not _HF_ID.match(req.model):
        raise InvalidArgument(
            "model must be a Hugging Face id like 'org/name' or an absolute directory path",
            param="model",
        )
    spec = KNOWN_MODELS.get(req.model)
    for param, candidate in [("gpu_type", gpu_type)] + [
        ("gpu_fallbacks", g) for g in req.gpu_fallbacks or []
    ]:
        gpu = rt.prices.gpu_types[candidate]
        if spec is not None and not fits(spec, gpu):
            raise InvalidArgument(
                f"{req.model} needs about {spec.min_gpu_memory_gb} GB of GPU memory and "
                f"{candidate} has {gpu.memory_gb} GB; choose a larger GPU type",
                param=param,
            )
    return gpu_type, ttl


def _fallbacks(req: ProvisionRequest, gpu_type: str) -> str | None:
    chosen = [g for g in dict.fromkeys(req.gpu_fallbacks or []) if g != gpu_type]
    return ",".join(chosen) or None


async def provision_instance(rt: Runtime, caller: Caller, req: ProvisionRequest) -> Provisioned:
    """Create an instance and start bringing it up; returns at once in `provisioning`."""
    caller.require(Permission.INSTANCES_WRITE)
    gpu_type, ttl = validate_request(rt, req)
    if req.tier == SHARED_TIER:
        gpu_type = shared_gpu_for(rt, req.model, req.gpu_type, req.gpu_fallbacks)
    if req.idempotency_key is not None:
        replay = await _replay(rt, caller, req, gpu_type, ttl)
        if replay is not None:
            return replay
    now = datetime.now(UTC)
    instance = Instance(
        workspace_id=caller.workspace_id,
        livemode=caller.livemode,
        model=req.model,
        gpu_type=gpu_type,
        tier=req.tier,
        provider=rt.provider.name,
        state=InstanceState.PENDING,
        # The dearest candidate until the provider says which one it got: never less.
        # The shared tier is paid per token, never per hour.
        hourly_price_micros=0
        if req.tier == SHARED_TIER
        else max(
            rt.prices.gpu_types[g].hourly_price_micros
            for g in [gpu_type, *(req.gpu_fallbacks or [])]
        ),
        gpu_fallbacks=_fallbacks(req, gpu_type),
        ttl_seconds=ttl,
        expires_at=now + timedelta(seconds=ttl),
        idempotency_key=req.idempotency_key,
        idle_timeout_s=req.idle_timeout or rt.settings.default_idle_timeout_s,
        client_id=caller.client_id,
        history=req.history,
        created_at=now,
    )
    # The upstream key is sealed and stored before any process exists, so a crash
    # mid-start still leaves the control plane able to reach (or clean up) the server.
    instance.upstream_key_sealed = seal(
        rt.settings.master_key_bytes, caller.workspace_id, secrets.token_urlsafe(32)
    )
    # Money first: the first GPU-time window is reserved (against the balance, the burn
    # cap and the instance's own cap) before anything exists; refused, nothing is made.
    if req.spend_cap_usd is not None:
        await caps.set_cap(
            rt, caller, CapScope.INSTANCE, usd_to_micros(req.spend_cap_usd), subject=instance.id
        )
    try:
        if req.tier == SHARED_TIER:
            first_window = await reserve_first_query(rt, instance)
        else:
            first_window = await rt.meter.reserve_first_window(instance)
    except OverBudget:
        await caps.remove_cap(rt, caller, CapScope.INSTANCE, subject=instance.id)
        raise
    try:
        async with caller.scoped(rt.db) as session:
            session.add(instance)
            _, plaintext = new_key_row(
                session, caller.workspace_id, KeyKind.INSTANCE,
                livemode=caller.livemode, name="default", instance_id=instance.id,
                maker=made_by(caller), seed=_replay_seed(rt, instance),
            )  # fmt: skip
            await session.commit()
    except IntegrityError:
        # A concurrent request with the same idempotency key won the race.
        await rt.ledger.settle(first_window, 0)
        await caps.remove_cap(rt, caller, CapScope.INSTANCE, subject=instance.id)
        replay = await _replay(rt, caller, req, gpu_type, ttl)
        if replay is None:
            raise
        return replay
    if req.tier == SHARED_TIER:  # it was there to prove the funds; queries hold their own
        await rt.ledger.settle(first_window, 0)
    await rt.instances.launch(instance.id)
    instance.state = InstanceState.PROVISIONING
    await audit.record_for(
        rt, caller, "instance.provision", target_type="instance", target_id=instance.id,
        detail={"gpu_type": gpu_type, "tier": req.tier, "livemode": caller.livemode,
                "ttl_seconds": ttl, "hourly_price_micros": instance.hourly_price_micros},
    )  # fmt: skip
    return Provisioned(instance, plaintext, replayed=False)


async def _replay(
    rt: Runtime, caller: Caller, req: ProvisionRequest, gpu_type: str, ttl: int
) -> Provisioned | None:
    async with caller.scoped(rt.db) as session:
        existing = (
            await session.exec(
                select(Instance).where(col(Instance.idempotency_key) == req.idempotency_key)
            )
        ).first()
        if existing is None:
            return None
        candidates = {gpu_type, *(req.gpu_fallbacks or [])}
        same = (
            existing.model, existing.tier, existing.ttl_seconds, existing.livemode,
            existing.history,
        ) == (req.model, req.tier, ttl, caller.livemode, req.history)  # fmt: skip
        if not same or existing.gpu_type not in candidates:
            raise Conflict(
                f"idempotency_key {req.idempotency_key!r} was already used for instance "
                f"{existing.id} with different parameters; use a new key",
                param="idempotency_key",
            )
        # The first response (with the key) may have been lost, and retries may run at
        # once on several servers: every answer carries the same key, minted again from
        # its seed, for as long as that key still works.
        plaintext: str | None = None
        seed = _replay_seed(rt, existing)
        if seed is not None and not existing.state.is_terminal:
            minted = mint_key(KeyKind.INSTANCE, livemode=existing.livemode, seed=seed)
            key = await session.get(ApiKey, minted.key_id)
            if (
                key is not None
                and key.instance_id == existing.id
                and key.revoked_at is None
                and key.disabled_at is None
                and key_matches(minted.plaintext, key.secret_hash)
            ):
                plaintext = minted.plaintext
        return Provisioned(existing, plaintext, replayed=True)


def _replay_seed(rt: Runtime, instance: Instance) -> bytes | None:
    """The secret an idempotent provision's instance key is minted from (None without an
    idempotency key): bound to the master key, the workspace, the instance and its
    idempotency key. Only the key's hash is stored, as for every key."""
    if instance.idempotency_key is None:
        return None
    message = f"instance-key\0{instance.id}\0{instance.idempotency_key}".encode()
    ws_key = workspace_key(rt.settings.master_key_bytes, instance.workspace_id)
    return hmac.new(ws_key, message, hashlib.sha256).digest()


async def get_instance(rt: Runtime, caller: Caller, instance_id: str) -> Instance:
    if caller.instance_id is None:
        caller.require(Permission.INSTANCES_READ)
    if caller.instance_id is not None and caller.instance_id != instance_id:
        raise NotFound(f"no instance {instance_id}", param="instance_id")
    async with caller.scoped(rt.db) as session:
        instance = await session.get(Instance, instance_id)
    if instance is None or instance.livemode != caller.livemode:
        raise NotFound(
            f"no instance {instance_id} in this workspace ({_mode(caller)} mode)",
            param="instance_id",
        )
    return instance


async def list_instances(
    rt: Runtime,
    caller: Caller,
    *,
    state: InstanceState | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Instance]:
    caller.require(Permission.INSTANCES_READ)
    if not 1 <= limit <= 1000:
        raise InvalidArgument("limit must be between 1 and 1000", param="limit")
    if offset < 0:
        raise InvalidArgument("offset must not be negative", param="offset")
    async with caller.scoped(rt.db) as session:
        query = (
            select(Instance)
            .where(col(Instance.livemode) == caller.livemode)
            .order_by(col(Instance.created_at).desc(), col(Instance.id))
            .limit(limit)
            .offset(offset)
        )
        if state is not None:
            query = query.where(col(Instance.state) == state.value)
        return list((await session.exec(query)).all())


async def count_instances(
    rt: Runtime, caller: Caller, *, states: Sequence[InstanceState] | None = None
) -> int:
    """How many instances the workspace has (in this mode), in `states` if given."""
    caller.require(Permission.INSTANCES_READ)
    async with caller.scoped(rt.db) as session:
        query = (
            select(sa.func.count())
            .select_from(Instance)
            .where(col(Instance.livemode) == caller.livemode)
        )
        if states is not None:
            query = query.where(col(Instance.state).in_([s.value for s in states]))
        return int((await session.exec(query)).one())


async def destroy_instance(rt: Runtime, caller: Caller, instance_id: str) -> Instance:
    """Stop the instance and delete everything it held. Repeating it is harmless."""
    caller.require(Permission.INSTANCES_WRITE)
    instance = await get_instance(rt, caller, instance_id)
    # Concurrent destroys (on any server) record one event: the one that began it.
    if await rt.instances.begin_destroy(instance.id):
        await audit.record_for(
            rt, caller, "instance.destroy", target_type="instance", target_id=instance.id
        )
    return await rt.instances.destroy(instance.id)


def _mode(caller: Caller) -> str:
    return "live" if caller.livemode else "test"
