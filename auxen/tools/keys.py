"""API key operations: create (shown once), list, revoke, and what happens to a
person's keys when they leave.

Every key records the person it was made by (`created_by_user_id`: the signed-in person,
the agent's person, or the person behind the key that made it) and how (`created_via`).
An account key acts with the lower of its own role and its creator's current role (see
`auxen.auth.authenticate`); removing a person disables the account keys they made
(`disable_keys_made_by`). Keys live in one mode: a test-mode caller sees, makes and
revokes test-mode keys only; a live-mode caller manages keys of both modes (as the
dashboard's two modes do).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auxen.auth.authenticate import disabled_why
from auxen.auth.keys import mint_key
from auxen.notify import Event, EventType, notify
from auxen.runtime import Runtime
from auxen.store.models import ApiKey, Instance, KeyKind, Membership, Role, User
from auxen.tools import audit
from auxen.tools.context import Caller, effective_role
from auxen.tools.errors import InvalidArgument, NotFound, PermissionDenied
from auxen.tools.permissions import Permission, at_least
from auxen.tools.views import KeyStanding

CREATOR_REMOVED = "creator_removed"


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


@dataclass(frozen=True)
class KeyMaker:
    """The person a new key is made by (None: an operator command), and how."""

    user_id: str | None
    via: str  # person | api_key | agent | init | operator


def new_key_row(
    session: AsyncSession,
    workspace_id: str,
    kind: KeyKind,
    *,
    livemode: bool,
    name: str = "",
    instance_id: str | None = None,
    role: Role = Role.MEMBER,
    maker: KeyMaker,
    seed: bytes | None = None,
) -> tuple[ApiKey, str]:
    """Add a key row to `session` (the caller commits); returns it and the plaintext
    (`seed`: see `mint_key`)."""
    minted = mint_key(kind, livemode=livemode, seed=seed)
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
        created_by_user_id=maker.user_id,
        created_via=maker.via,
    )
    session.add(row)
    return row, minted.plaintext


def made_by(caller: Caller) -> KeyMaker:
    """Who makes a key `caller` asks for: the person it acts for, and whether it came
    through the dashboard, an agent or another key."""
    if caller.client_id is not None:
        via = "agent"
    elif caller.key_id is None and caller.user_id is not None:
        via = "person"
    else:
        via = "api_key"
    return KeyMaker(caller.person_id, via)


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
    if req.livemode is not None and not caller.reaches(req.livemode):
        raise PermissionDenied(
            "a test-mode caller cannot make live-mode keys; use a live key or the dashboard",
            param="livemode",
        )
    async with caller.scoped(rt.db, both_modes=True) as session:
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
                maker=made_by(caller),
            )  # fmt: skip
        else:
            livemode = caller.livemode if req.livemode is None else req.livemode
            row, plaintext = new_key_row(
                session, caller.workspace_id, KeyKind.ACCOUNT, livemode=livemode, name=req.name,
                role=role, maker=made_by(caller),
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
                    "created_by_user": caller.person_id,
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
    async with caller.scoped(rt.db, both_modes=True) as session:
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
    async with caller.scoped(rt.db, both_modes=True) as session:
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


# -- who a key acts for ------------------------------------------------------------


async def standings(rt: Runtime, caller: Caller, rows: Sequence[ApiKey]) -> dict[str, KeyStanding]:
    """Each key's standing, from its creator's membership now (one query)."""
    people = {r.created_by_user_id for r in rows if r.created_by_user_id}
    roles: dict[str, Role] = {}
    emails: dict[str, str] = {}
    if people:
        async with caller.scoped(rt.db) as session:
            found = await session.exec(
                select(Membership.user_id, Membership.role).where(
                    col(Membership.user_id).in_(sorted(people))
                )
            )
            roles = {user_id: Role(role) for user_id, role in found.all()}
        async with rt.db.system() as session:
            users = await session.exec(
                select(User.id, User.email).where(col(User.id).in_(sorted(people)))
            )
            emails = dict(users.all())
    out: dict[str, KeyStanding] = {}
    for row in rows:
        who = row.created_by_user_id
        acting: Role | None = None
        why: str | None = None
        if row.kind is KeyKind.ACCOUNT:
            acting = effective_role(row.role, roles.get(who or ""), has_creator=who is not None)
        if row.revoked_at is not None:
            status: Literal["active", "revoked", "disabled"] = "revoked"
        elif row.disabled_at is not None:
            status, why = "disabled", disabled_why(row)
        elif row.kind is KeyKind.ACCOUNT and acting is None:
            status, why = "disabled", "the person who created it is no longer in the workspace"
        else:
            status = "active"
        out[row.id] = KeyStanding(
            created_by=emails.get(who, who) if who else None,
            effective_role=acting if status == "active" else None,
            status=status,
            why=why,
        )
    return out


@dataclass(frozen=True)
class DisabledKey:
    id: str
    livemode: bool


async def disable_keys_made_by(
    session: AsyncSession, workspace_id: str, user_id: str, now: datetime
) -> list[DisabledKey]:
    """In `session`'s transaction (the caller commits): disable the account keys
    `user_id` made in the workspace that still work, and queue one notification per mode
    telling the owners which. Instance keys belong to their instance and keep working
    (an admin rotates them when someone who knew them leaves)."""
    found = await session.exec(
        select(ApiKey.id, ApiKey.livemode).where(
            col(ApiKey.workspace_id) == workspace_id,
            col(ApiKey.created_by_user_id) == user_id,
            col(ApiKey.kind) == KeyKind.ACCOUNT.value,
            col(ApiKey.revoked_at).is_(None),
            col(ApiKey.disabled_at).is_(None),
        )
    )
    keys = [DisabledKey(key_id, livemode) for key_id, livemode in found.all()]
    if not keys:
        return []
    await session.exec(
        sa.update(ApiKey)
        .where(col(ApiKey.id).in_([k.id for k in keys]))
        .where(col(ApiKey.disabled_at).is_(None))
        .values(disabled_at=now, disabled_reason=CREATOR_REMOVED)
    )
    for livemode in sorted({k.livemode for k in keys}):
        ids = [k.id for k in keys if k.livemode is livemode]
        await notify(
            session,
            workspace_id,
            Event(
                EventType.API_KEYS_DISABLED,
                {"user_id": user_id, "reason": CREATOR_REMOVED, "count": len(ids),
                 "key_ids": ",".join(ids)[:500]},
                livemode=livemode,
            ),
        )  # fmt: skip
    return keys
