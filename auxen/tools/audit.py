"""The audit log: who (a person, an API key, an agent, an operator or Auxen itself) did
what to which object, when and from where. One function writes it, `record`, called from
the operations and the sign-in pages; owners and admins read it (`list_audit_events`).

What an event may hold is narrow on purpose: action names, ids, an address, a truncated
user agent and a small JSON object of ids and numbers. Never prompts, documents, keys,
passwords or any other content: `detail` refuses anything that is not a short id-like
string, a number or a boolean. Events older than `AUXEN_AUDIT_RETENTION_DAYS` are swept by
the reconciler loop.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from pydantic import BaseModel
from sqlmodel import col, select

from auxen.billing.retention import deleted_workspaces
from auxen.store.db import Database
from auxen.store.models import AuditEvent, Membership, User, as_utc
from auxen.tools.context import Caller
from auxen.tools.errors import InvalidArgument
from auxen.tools.permissions import Permission

if TYPE_CHECKING:
    from auxen.runtime import Runtime

log = logging.getLogger(__name__)

DetailValue = str | int | float | bool | None
_ID_LIKE = re.compile(r"^[\w.:/@+-]{0,120}$")
USER_AGENT_MAX = 200


@dataclass(frozen=True)
class Actor:
    type: str  # user | api_key | oauth_client | operator | system
    id: str | None
    label: str = ""
    address: str | None = None
    user_agent: str | None = None

    @classmethod
    def of(cls, caller: Caller) -> Actor:
        ident: str | None
        if caller.client_id is not None:
            kind, ident = "oauth_client", caller.client_id
            label = f"agent {caller.client_id[:200]}"
        elif caller.key_id is None and caller.user_id is not None:
            kind, ident, label = "user", caller.user_id, ""
        else:
            kind, ident, label = "api_key", caller.key_id, f"API key {caller.key_id}"
        return cls(kind, ident, label, caller.address, caller.user_agent)

    @classmethod
    def person(
        cls, user_id: str | None, email: str, address: str | None, user_agent: str | None = None
    ) -> Actor:
        return cls("user", user_id, email, address, user_agent)

    @classmethod
    def system(cls, why: str = "auxen") -> Actor:
        return cls("system", None, why)

    @classmethod
    def operator(cls) -> Actor:
        return cls("operator", None, "operator (CLI)", "local")


def _detail(detail: dict[str, DetailValue] | None) -> str:
    for key, value in (detail or {}).items():
        if isinstance(value, str) and not _ID_LIKE.match(value):
            # A bug, never user input: an event must not carry free text.
            raise ValueError(f"audit detail {key!r} is not an id-like value")
    return json.dumps(detail or {}, separators=(",", ":"), sort_keys=True)[:2000]


async def _label(db: Database, actor: Actor, user_id: str | None) -> str:
    """Who the actor is, in words: a person's email (looked up once, now, so the log
    still says who it was after they leave)."""
    if actor.label and actor.type != "oauth_client":
        return actor.label
    if user_id is None:
        return actor.label
    async with db.system() as session:
        user = await session.get(User, user_id)
    email = user.email if user is not None else user_id
    return f"{actor.label} for {email}" if actor.type == "oauth_client" else email


async def record(
    db: Database,
    workspace_id: str,
    actor: Actor,
    action: str,
    *,
    target_type: str | None = None,
    target_id: str | None = None,
    detail: dict[str, DetailValue] | None = None,
    user_id: str | None = None,
) -> None:
    """Write one event to `workspace_id`'s audit log. `user_id`: the person behind a
    user or agent actor, to label it."""
    who = user_id or (actor.id if actor.type == "user" else None)
    event = AuditEvent(
        workspace_id=workspace_id,
        actor_type=actor.type,
        actor_id=(actor.id or None) and actor.id[:2000],
        actor_label=(await _label(db, actor, who))[:400],
        action=action,
        target_type=target_type,
        target_id=target_id[:2000] if target_id else None,
        address=(actor.address or None) and actor.address[:64],
        user_agent=(actor.user_agent or None) and actor.user_agent[:USER_AGENT_MAX],
        detail=_detail(detail),
    )
    async with db.scoped(workspace_id) as session:
        session.add(event)
        await session.commit()


async def record_for(
    rt: Runtime,
    caller: Caller,
    action: str,
    *,
    target_type: str | None = None,
    target_id: str | None = None,
    detail: dict[str, DetailValue] | None = None,
) -> None:
    """`record` for an operation's caller, in the caller's workspace."""
    await record(
        rt.db, caller.workspace_id, Actor.of(caller), action,
        target_type=target_type, target_id=target_id, detail=detail, user_id=caller.user_id,
    )  # fmt: skip


async def record_for_user(
    db: Database,
    user_id: str,
    email: str,
    action: str,
    *,
    address: str | None,
    user_agent: str | None = None,
    detail: dict[str, DetailValue] | None = None,
) -> None:
    """A person's own event (sign-in, two-factor changes): written to every workspace
    they belong to, so each workspace's admins see it."""
    async with db.system() as session:
        workspaces = (
            await session.exec(
                select(Membership.workspace_id).where(col(Membership.user_id) == user_id)
            )
        ).all()
    actor = Actor.person(user_id, email, address, user_agent)
    for workspace_id in workspaces:
        await record(
            db, workspace_id, actor, action, target_type="user", target_id=user_id,
            detail=detail,
        )  # fmt: skip


async def record_failed_login(
    db: Database, email: str, address: str | None, user_agent: str | None
) -> None:
    """A wrong password for an existing account, in that person's workspaces (an email
    with no account has no workspace to tell)."""
    email = email.strip().lower()[:320]
    async with db.system() as session:
        user = (await session.exec(select(User).where(col(User.email) == email))).first()
    if user is not None:
        await record_for_user(
            db, user.id, user.email, "login.failure", address=address, user_agent=user_agent,
            detail={"mfa": False},
        )  # fmt: skip


async def sweep(db: Database, retention_days: int) -> int:
    """Delete events older than the retention period; how many went. A deleted
    workspace's events are kept for its own retention period (`billing.retention`)."""
    cutoff = datetime.now(UTC) - timedelta(days=retention_days)
    async with db.system() as session:
        result = await session.exec(
            sa.delete(AuditEvent).where(
                col(AuditEvent.created_at) < cutoff,
                col(AuditEvent.workspace_id).not_in(deleted_workspaces()),
            )
        )
        await session.commit()
    return int(result.rowcount or 0)


class AuditEventView(BaseModel):
    id: str
    created_at: str
    actor_type: str
    actor_id: str | None
    actor: str
    action: str
    target_type: str | None
    target_id: str | None
    address: str | None
    user_agent: str | None
    detail: dict[str, DetailValue]


class AuditPage(BaseModel):
    events: list[AuditEventView]
    next_before: str | None  # pass as `before` for the next (older) page


def event_view(event: AuditEvent) -> AuditEventView:
    return AuditEventView(
        id=event.id,
        created_at=as_utc(event.created_at).isoformat().replace("+00:00", "Z"),
        actor_type=event.actor_type,
        actor_id=event.actor_id,
        actor=event.actor_label,
        action=event.action,
        target_type=event.target_type,
        target_id=event.target_id,
        address=event.address,
        user_agent=event.user_agent,
        detail=json.loads(event.detail or "{}"),
    )


async def list_audit_events(
    rt: Runtime, caller: Caller, *, limit: int = 50, before: str | None = None
) -> AuditPage:
    """The workspace's events, newest first; `before` (an event id) pages back."""
    caller.require(Permission.AUDIT_READ)
    if not 1 <= limit <= 500:
        raise InvalidArgument("limit must be between 1 and 500", param="limit")
    async with caller.scoped(rt.db) as session:
        query = select(AuditEvent).order_by(
            col(AuditEvent.created_at).desc(), col(AuditEvent.id).desc()
        )
        if before is not None:
            anchor = await session.get(AuditEvent, before[:32])
            if anchor is None:
                raise InvalidArgument(f"no audit event {before[:32]}", param="before")
            query = query.where(
                sa.or_(
                    col(AuditEvent.created_at) < anchor.created_at,
                    sa.and_(
                        col(AuditEvent.created_at) == anchor.created_at,
                        col(AuditEvent.id) < anchor.id,
                    ),
                )
            )
        rows = list((await session.exec(query.limit(limit + 1))).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(
        events=[event_view(e) for e in rows], next_before=rows[-1].id if more and rows else None
    )


async def safely(coro: object) -> None:
    """Await an audit write off a path that must not fail because of it (the
    reconciler); a failure is logged."""
    try:
        await coro  # type: ignore[misc]
    except Exception:
        log.exception("could not write an audit event")
