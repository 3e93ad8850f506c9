"""People in a workspace: who is in it, inviting, changing roles, removing, handing
ownership over, and deleting the workspace.

Rules (see tools.permissions for the table): admins invite (up to admin), promote
members and remove members; only the owner changes or removes an admin; nobody removes
the owner, who hands ownership to another member first. Removing someone ends at once
what let them in: their membership, their agents' OAuth tokens and consents for the
workspace, their signed-in browsers, and the account keys they made (disabled, audited,
and told to the owners). A role change (or an ownership transfer) applies at once to
the person's agents and to the account keys they made, which act with the lower of their
own role and their creator's.

An invitation is a single-use link `/invite/<token>`: the token is 256 random bits, stored
only as SHA-256; it expires (AUXEN_INVITE_TTL_S) and an admin can revoke it. Accepting it
needs a signed-in person whose email is the one invited.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import SQLModel, col, select

from auxen.billing.retention import is_kept_record
from auxen.store.db import Database, tenant_tables
from auxen.store.ids import new_id
from auxen.store.models import (
    Instance,
    InstanceState,
    Invite,
    KnowledgeBase,
    Membership,
    OAuthCode,
    OAuthConsent,
    OAuthToken,
    Role,
    User,
    WebSession,
    Workspace,
    as_utc,
)
from auxen.tools import audit
from auxen.tools.accounts import normalise_email
from auxen.tools.context import Caller
from auxen.tools.errors import Conflict, InvalidArgument, NotFound, PermissionDenied
from auxen.tools.keys import CREATOR_REMOVED, DisabledKey, disable_keys_made_by
from auxen.tools.permissions import Permission, at_least, role_may
from auxen.tools.views import _iso

if TYPE_CHECKING:
    from auxen.runtime import Runtime

log = logging.getLogger(__name__)
INVITE_PATH = "/invite/"


async def membership_role(db: Database, workspace_id: str, user_id: str) -> Role | None:
    async with db.scoped(workspace_id) as session:
        role = (
            await session.exec(select(Membership.role).where(col(Membership.user_id) == user_id))
        ).first()
    return Role(role) if role is not None else None


# -- views -------------------------------------------------------------------------


class MemberView(BaseModel):
    user_id: str
    email: str
    role: Role
    joined_at: str | None


class InviteView(BaseModel):
    id: str
    object: Literal["invite"] = "invite"
    email: str
    role: Role
    invited_by: str
    created_at: str | None
    expires_at: str | None
    status: Literal["pending", "accepted", "revoked", "expired"]
    url: str | None = Field(default=None, description="The link to send; shown once")


def invite_status(
    invite: Invite, now: datetime | None = None
) -> Literal["pending", "accepted", "revoked", "expired"]:
    now = now or datetime.now(UTC)
    if invite.accepted_at is not None:
        return "accepted"
    if invite.revoked_at is not None:
        return "revoked"
    return "expired" if as_utc(invite.expires_at) <= now else "pending"


def invite_view(invite: Invite, url: str | None = None) -> InviteView:
    return InviteView(
        id=invite.id,
        email=invite.email,
        role=invite.role,
        invited_by=invite.invited_by,
        created_at=_iso(invite.created_at),
        expires_at=_iso(invite.expires_at),
        status=invite_status(invite),
        url=url,
    )


# -- members -----------------------------------------------------------------------


async def list_members(rt: Runtime, caller: Caller) -> list[MemberView]:
    caller.require(Permission.MEMBERS_READ)
    async with caller.scoped(rt.db) as session:
        rows = (
            await session.exec(
                select(Membership, User.email)
                .join(User, col(User.id) == col(Membership.user_id))
                .order_by(col(Membership.created_at), col(Membership.id))
            )
        ).all()
    return [
        MemberView(user_id=m.user_id, email=email, role=m.role, joined_at=_iso(m.created_at))
        for m, email in rows
    ]


class RoleChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal[Role.ADMIN, Role.MEMBER] = Field(
        description="admin or member (ownership moves with POST /v1/workspace/transfer)"
    )


async def _membership(rt: Runtime, caller: Caller, user_id: str) -> Membership:
    async with caller.scoped(rt.db) as session:
        found = (
            await session.exec(select(Membership).where(col(Membership.user_id) == user_id[:32]))
        ).first()
    if found is None:
        raise NotFound(f"no member {user_id[:32]} in this workspace", param="user_id")
    return found


async def change_role(rt: Runtime, caller: Caller, user_id: str, req: RoleChange) -> MemberView:
    caller.require(Permission.MEMBERS_MANAGE)
    member = await _membership(rt, caller, user_id)
    if member.role is Role.OWNER:
        raise Conflict(
            "the owner's role changes only by transferring ownership to someone else",
            param="user_id",
        )
    if Role.ADMIN in (member.role, req.role) and member.role is not req.role:
        if member.role is Role.ADMIN:
            caller.require(Permission.ADMINS_MANAGE)
        elif not at_least(caller.role, req.role):
            raise PermissionDenied("nobody can grant a role above their own", param="role")
    before = member.role
    async with caller.scoped(rt.db) as session:
        await session.exec(
            sa.update(Membership).where(col(Membership.id) == member.id).values(role=req.role)
        )
        await session.commit()
    # Their keys act with their new role: at once here, within the cache's seconds elsewhere.
    rt.auth.forget_workspace(caller.workspace_id)
    if before is not req.role:
        await audit.record_for(
            rt, caller, "member.role_change", target_type="user", target_id=member.user_id,
            detail={"from": before.value, "to": req.role.value},
        )  # fmt: skip
    return next(m for m in await list_members(rt, caller) if m.user_id == member.user_id)


async def remove_member(rt: Runtime, caller: Caller, user_id: str) -> MemberView:
    """Remove someone; what let them in ends now (see the module docstring)."""
    caller.require(Permission.MEMBERS_MANAGE)
    member = await _membership(rt, caller, user_id)
    if member.role is Role.OWNER:
        raise Conflict(
            "the owner cannot be removed; transfer ownership first (POST /v1/workspace/transfer)",
            param="user_id",
        )
    if member.role is Role.ADMIN:
        caller.require(Permission.ADMINS_MANAGE)
    view = next(m for m in await list_members(rt, caller) if m.user_id == member.user_id)
    disabled = await end_access(rt.db, caller.workspace_id, member.user_id)
    rt.auth.forget_workspace(caller.workspace_id)
    await audit.record_for(
        rt, caller, "member.remove", target_type="user", target_id=member.user_id,
        detail={"role": member.role.value, "keys_disabled": len(disabled)},
    )  # fmt: skip
    for key in disabled:
        await audit.record_for(
            rt, caller, "key.disable", target_type="api_key", target_id=key.id,
            detail={"reason": CREATOR_REMOVED, "user_id": member.user_id,
                    "livemode": key.livemode},
        )  # fmt: skip
    return view


async def end_access(db: Database, workspace_id: str, user_id: str) -> list[DisabledKey]:
    """In one transaction: delete the membership, revoke the person's OAuth tokens and
    consents for the workspace, sign out every browser they have (sessions are per
    person), and disable the account keys they made (the owners are told). Returns the
    keys it disabled."""
    now = datetime.now(UTC)
    async with db.system() as session:
        await session.exec(
            sa.delete(Membership).where(
                col(Membership.workspace_id) == workspace_id, col(Membership.user_id) == user_id
            )
        )
        await session.exec(
            sa.update(OAuthToken)
            .where(col(OAuthToken.workspace_id) == workspace_id)
            .where(col(OAuthToken.user_id) == user_id, col(OAuthToken.revoked_at).is_(None))
            .values(revoked_at=now)
        )
        for table in (OAuthConsent, OAuthCode):
            await session.exec(
                sa.delete(table).where(
                    col(table.workspace_id) == workspace_id, col(table.user_id) == user_id
                )
            )
        await session.exec(sa.delete(WebSession).where(col(WebSession.user_id) == user_id))
        disabled = await disable_keys_made_by(session, workspace_id, user_id, now)
        await session.commit()
    return disabled


# -- invitations -------------------------------------------------------------------


class InviteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=320, description="Who to invite")
    role: Literal[Role.ADMIN, Role.MEMBER] = Field(
        default=Role.MEMBER, description="member or admin (not above your own role)"
    )


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_invite(rt: Runtime, caller: Caller, req: InviteRequest) -> InviteView:
    """An invitation; its link is in the answer, once."""
    caller.require(Permission.MEMBERS_MANAGE)
    caller.require_proven_email("invite anyone")
    if not at_least(caller.role, req.role):
        raise PermissionDenied("nobody can invite with a role above their own", param="role")
    email = normalise_email(req.email)
    async with caller.scoped(rt.db) as session:
        already = (
            await session.exec(
                select(Membership.id)
                .join(User, col(User.id) == col(Membership.user_id))
                .where(col(User.email) == email)
            )
        ).first()
    if already is not None:
        raise Conflict(f"{email} is already a member of this workspace", param="email")
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    actor = audit.Actor.of(caller)
    invite = Invite(
        workspace_id=caller.workspace_id,
        email=email,
        role=req.role,
        token_hash=_token_hash(token),
        invited_by=(actor.label or actor.id or actor.type)[:200],
        created_at=now,
        expires_at=now + timedelta(seconds=rt.settings.invite_ttl_s),
    )
    if caller.user_id is not None and caller.client_id is None:
        invite.invited_by = await _email_of(rt.db, caller.user_id)
    async with caller.scoped(rt.db) as session:
        session.add(invite)
        await session.commit()
    await audit.record_for(
        rt, caller, "member.invite", target_type="invite", target_id=invite.id,
        detail={"email": email, "role": req.role.value},
    )  # fmt: skip
    return invite_view(invite, url=f"{rt.settings.base_url}{INVITE_PATH}{token}")


async def _email_of(db: Database, user_id: str) -> str:
    async with db.system() as session:
        user = await session.get(User, user_id)
    return user.email if user is not None else user_id


async def list_invites(rt: Runtime, caller: Caller) -> list[InviteView]:
    caller.require(Permission.MEMBERS_MANAGE)
    async with caller.scoped(rt.db) as session:
        rows = (
            await session.exec(select(Invite).order_by(col(Invite.created_at).desc()).limit(200))
        ).all()
    return [invite_view(i) for i in rows]


async def revoke_invite(rt: Runtime, caller: Caller, invite_id: str) -> InviteView:
    caller.require(Permission.MEMBERS_MANAGE)
    async with caller.scoped(rt.db) as session:
        invite = await session.get(Invite, invite_id[:32])
        if invite is None:
            raise NotFound(f"no invite {invite_id[:32]}", param="invite_id")
        if invite.accepted_at is not None:
            raise Conflict("this invite was already accepted; remove the member instead")
        if invite.revoked_at is None:
            invite.revoked_at = datetime.now(UTC)
            session.add(invite)
            await session.commit()
            await audit.record_for(
                rt, caller, "member.invite_revoke", target_type="invite", target_id=invite.id
            )
    return invite_view(invite)


@dataclass(frozen=True)
class PendingInvite:
    invite: Invite
    workspace: Workspace


async def open_invite(rt: Runtime, token: str) -> PendingInvite:
    """The invitation behind a link, if it can still be accepted; otherwise a typed error
    whose message the page shows."""
    async with rt.db.system() as session:
        invite = (
            await session.exec(select(Invite).where(col(Invite.token_hash) == _token_hash(token)))
        ).first()
        workspace = await session.get(Workspace, invite.workspace_id) if invite else None
    if invite is None or workspace is None:
        raise NotFound("this invitation link is not valid; ask for a new one")
    status = invite_status(invite)
    if status != "pending":
        why = {
            "accepted": "was already used",
            "revoked": "was withdrawn",
            "expired": "has expired",
        }[status]
        raise Conflict(f"this invitation {why}; ask an admin of {workspace.name} for a new one")
    return PendingInvite(invite, workspace)


async def accept_invite(
    rt: Runtime, user: User, token: str, *, address: str, user_agent: str | None = None
) -> Workspace:
    """Join the invitation's workspace with its role: once, before it expires, and only
    as the person it was sent to."""
    pending = await open_invite(rt, token)
    invite = pending.invite
    if user.email != invite.email:
        raise PermissionDenied(
            f"this invitation is for another email address; sign in as {invite.email}"
        )
    now = datetime.now(UTC)
    async with rt.db.engine.begin() as conn:
        spent = await conn.execute(
            sa.update(Invite)
            .where(col(Invite.id) == invite.id)
            .where(col(Invite.accepted_at).is_(None), col(Invite.revoked_at).is_(None))
            .where(col(Invite.expires_at) > now)
            .values(accepted_at=now, accepted_by=user.id)
        )
        if spent.rowcount != 1:
            raise Conflict("this invitation was already used or withdrawn")
        member = (
            await conn.execute(
                sa.select(col(Membership.id)).where(
                    col(Membership.workspace_id) == invite.workspace_id,
                    col(Membership.user_id) == user.id,
                )
            )
        ).first()
        if member is None:
            await conn.execute(
                sa.insert(Membership).values(
                    id=new_id("mem"),
                    workspace_id=invite.workspace_id,
                    user_id=user.id,
                    role=invite.role.value,
                    created_at=now,
                )
            )
    await audit.record(
        rt.db, invite.workspace_id, audit.Actor.person(user.id, user.email, address, user_agent),
        "member.join", target_type="invite", target_id=invite.id,
        detail={"role": invite.role.value},
    )  # fmt: skip
    return pending.workspace


# -- ownership and the workspace itself --------------------------------------------


class TransferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(max_length=32, description="The member who becomes the owner")


async def transfer_ownership(rt: Runtime, caller: Caller, req: TransferRequest) -> MemberView:
    """Make another member the owner; the current owner becomes an admin."""
    caller.require(Permission.OWNERSHIP_TRANSFER)
    target = await _membership(rt, caller, req.user_id)
    if target.role is Role.OWNER:
        raise Conflict("this member already owns the workspace", param="user_id")
    async with caller.scoped(rt.db) as session:
        await session.exec(
            sa.update(Membership).where(col(Membership.role) == Role.OWNER).values(role=Role.ADMIN)
        )
        await session.exec(
            sa.update(Membership).where(col(Membership.id) == target.id).values(role=Role.OWNER)
        )
        await session.commit()
    # The former owner's owner-role keys now act as admin (the lower of the two roles).
    rt.auth.forget_workspace(caller.workspace_id)
    await audit.record_for(
        rt, caller, "workspace.transfer", target_type="user", target_id=target.user_id
    )
    return next(m for m in await list_members(rt, caller) if m.user_id == target.user_id)


class DeletedWorkspace(BaseModel):
    id: str
    object: Literal["workspace"] = "workspace"
    deleted: bool = True


async def delete_workspace(rt: Runtime, caller: Caller, confirm: str | None) -> DeletedWorkspace:
    """Delete the workspace and everything in it (knowledge bases with their vectors,
    keys, members, usage), except its ledger and audit log, which are kept for the
    retention period (`billing.retention`). Refused while any instance is not yet
    destroyed; `confirm` must repeat the workspace id."""
    caller.require(Permission.WORKSPACE_DELETE)
    if confirm != caller.workspace_id:
        raise InvalidArgument(
            f"to delete this workspace, pass confirm={caller.workspace_id}", param="confirm"
        )
    ws = caller.workspace_id
    # The workspace as a whole: instances and knowledge bases of both modes.
    async with caller.scoped(rt.db, both_modes=True) as session:
        live = (
            await session.exec(
                select(Instance.id).where(
                    col(Instance.state).notin_([InstanceState.DESTROYED, InstanceState.FAILED])
                )
            )
        ).all()
        kbs = (await session.exec(select(KnowledgeBase.id))).all()
    if live:
        raise Conflict(
            f"destroy the workspace's instances first ({', '.join(sorted(live)[:10])}"
            f"{', ...' if len(live) > 10 else ''}); then delete it",
            param="confirm",
        )
    for kb_id in kbs:
        await rt.kb.store.drop(ws, kb_id)
    await audit.record_for(rt, caller, "workspace.delete", target_type="workspace", target_id=ws)
    tenant = set(tenant_tables())
    async with rt.db.engine.begin() as conn:
        # Children before parents: the reverse of the order tables must be created in.
        for table in reversed(SQLModel.metadata.sorted_tables):
            if is_kept_record(table):
                continue  # financial and audit records outlive it (billing.retention)
            if table.name == "oauth_code" or any(t.__table__ is table for t in tenant):
                await conn.execute(sa.delete(table).where(table.c.workspace_id == ws))
        await conn.execute(
            sa.update(Workspace)
            .where(col(Workspace.id) == ws)
            .values(
                name="", alert_webhook_url=None, alert_webhook_sealed=None,
                deleted_at=datetime.now(UTC),
            )
        )  # fmt: skip
    rt.kb.forget_attachments()
    rt.auth.forget_workspace(ws)  # other processes: within auth.authenticate.CACHE_TTL_S
    log.warning("workspace %s deleted by %s %s", ws, audit.Actor.of(caller).type, caller.key_id)
    return DeletedWorkspace(id=ws)


def may_manage(role: Role) -> bool:
    return role_may(role, Permission.MEMBERS_MANAGE)
