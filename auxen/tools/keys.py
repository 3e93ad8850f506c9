"""API key operations: create (shown once), list, revoke."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auxen.auth.keys import mint_key
from auxen.notify import Event, EventType, notify
from auxen.runtime import Runtime
from auxen.store.models import ApiKey, Instance, KeyKind, Role
from auxen.tools import audit
from auxen.tools.context import Caller
from auxen.tools.errors import InvalidArgument, NotFound, PermissionDenied
from auxen.tools.permissions import Permission, at_least


class CreateKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200, description="A label to recognise the key by")
    instance_id: str | None = Field(
        default=None,
        max_length=32,
        description="Mint an instance key (auxk_) for this instance instead of an account key",
    )
    livemode: bool | None = Field(
        default=None,
        description="Account keys only: live (auxen_live_) or test (auxen_test_); "
        "defaults to the calling key's mode",
    )
    role: Role | None = Field(
        default=None,
        description="Account keys only: what the key may do (owner, admin or member); "
        "defaults to, and may not exceed, the caller's own role",
    )


def new_key_row(
    session: AsyncSession,
    workspace_id: str,
    kind: KeyKind,
    *,
    livemode: bool,
    name: str = "",
    instance_id: str | None = None,
    role: Role = Role.MEMBER,
) -> tuple[ApiKey, str]:
    """Add a key row to `session` (the caller commits); returns it and the plaintext."""
    minted = mint_key(kind, livemode=livemode)
    row = ApiKey(
        id=minted.key_id,
        workspace_id=workspace_id,
        kind=kind,
        livemode=livemode,
        instance_id=instance_id,
        name=name,
        display_prefix=minted.display_prefix,
        secret_hash=minted.secret_hash,
        role=role,
    )
    session.add(row)
    return row, minted.plaintext


async def create_key(rt: Runtime, caller: Caller, req: CreateKeyRequest) -> tuple[ApiKey, str]:
    caller.require(
        Permission.INSTANCE_KEYS if req.instance_id is not None else Permission.ACCOUNT_KEYS
    )
    if req.instance_id is None:
        caller.require_proven_email("make account keys")
    role = req.role or caller.role
    if req.instance_id is None and not at_least(caller.role, role):
        raise PermissionDenied(
            f"a key cannot have a role above its creator's ({caller.role.value})", param="role"
        )
    async with rt.db.scoped(caller.workspace_id) as session:
        if req.instance_id is not None:
            if req.role is not None:
                raise InvalidArgument(
                    "instance keys only reach their instance; omit role", param="role"
                )
            if req.livemode is not None:
                raise InvalidArgument(
                    "instance keys take their instance's mode; omit livemode", param="livemode"
                )
            instance = await session.get(Instance, req.instance_id)
            if instance is None or instance.livemode != caller.livemode:
                raise NotFound(f"no instance {req.instance_id}", param="instance_id")
            if instance.state.is_terminal:
                raise InvalidArgument(
                    f"instance {instance.id} is {instance.state.value}; keys can only be "
                    "created for live instances",
                    param="instance_id",
                )
            row, plaintext = new_key_row(
                session, caller.workspace_id, KeyKind.INSTANCE,
                livemode=instance.livemode, name=req.name, instance_id=instance.id,
            )  # fmt: skip
        else:
            livemode = caller.livemode if req.livemode is None else req.livemode
            row, plaintext = new_key_row(
                session, caller.workspace_id, KeyKind.ACCOUNT, livemode=livemode, name=req.name,
                role=role,
            )  # fmt: skip
        # Told in the same transaction: the notification exists exactly when the key does.
        await notify(
            session,
            caller.workspace_id,
            Event(
                EventType.API_KEY_CREATED,
                {
                    "key_id": row.id,
                    "kind": row.kind.value,
                    "name": row.name,
                    "prefix": row.display_prefix,
                    "instance_id": row.instance_id,
                    "created_by_user": caller.user_id,
                    "created_by_client": (caller.client_id or "")[:300] or None,
                    "created_by_key": caller.key_id,
                },
                livemode=row.livemode,
            ),
        )
        await session.commit()
    await audit.record_for(
        rt, caller, "key.create", target_type="api_key", target_id=row.id,
        detail={"kind": row.kind.value, "instance_id": row.instance_id,
                "role": row.role.value if row.kind is KeyKind.ACCOUNT else None},
    )  # fmt: skip
    return row, plaintext


async def list_keys(
    rt: Runtime,
    caller: Caller,
    *,
    include_revoked: bool = False,
    kind: KeyKind | None = None,
    livemode: bool | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[ApiKey]:
    caller.require(Permission.ACCOUNT_KEYS)
    async with rt.db.scoped(caller.workspace_id) as session:
        query = select(ApiKey).order_by(col(ApiKey.created_at).desc(), col(ApiKey.id))
        if not include_revoked:
            query = query.where(col(ApiKey.revoked_at).is_(None))
        if kind is not None:
            query = query.where(col(ApiKey.kind) == kind.value)
        if livemode is not None:
            query = query.where(col(ApiKey.livemode) == livemode)
        if limit is not None:
            query = query.limit(limit).offset(offset)
        return list((await session.exec(query)).all())


async def revoke_key(rt: Runtime, caller: Caller, key_id: str) -> ApiKey:
    """Revoke a key; revoking a revoked key changes nothing and succeeds. Members may
    revoke instance keys; account keys need an admin."""
    caller.require(Permission.INSTANCE_KEYS)
    async with rt.db.scoped(caller.workspace_id) as session:
        row = await session.get(ApiKey, key_id)
        if row is None:
            raise NotFound(f"no API key {key_id}", param="key_id")
        if row.kind is KeyKind.ACCOUNT:
            caller.require(Permission.ACCOUNT_KEYS)
        revoked = row.revoked_at is None
        if revoked:
            row.revoked_at = datetime.now(UTC)
            session.add(row)
            await session.commit()
    rt.auth.forget_key(key_id)
    if revoked:
        await audit.record_for(
            rt, caller, "key.revoke", target_type="api_key", target_id=row.id,
            detail={"kind": row.kind.value},
        )  # fmt: skip
    return row
