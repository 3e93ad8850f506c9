"""Who is calling: the request context every operation receives, and the checks every
operation starts with (`require`: role and mode) and the sessions it reads and writes
through (`scoped`: the caller's workspace and mode)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlmodel.ext.asyncio.session import AsyncSession

from auxen.store.db import Database
from auxen.store.models import KeyKind, Role
from auxen.store.modes import mode_scoped
from auxen.tools.errors import PermissionDenied
from auxen.tools.permissions import (
    INSTANCE_KEY_PERMISSIONS,
    LEAST_ROLE,
    PER_MODE,
    RANK,
    Permission,
    role_may,
)


def lower(a: Role, b: Role) -> Role:
    return a if RANK[a] <= RANK[b] else b


def effective_role(key_role: Role, creator_role: Role | None, *, has_creator: bool) -> Role | None:
    """What an account key may do now: the lower of its own role and its creator's
    current role in the workspace; None (it no longer works) when its creator has left.
    Keys with no person behind them (made by an operator command) keep their own role."""
    if not has_creator:
        return key_role
    return None if creator_role is None else lower(key_role, creator_role)


@dataclass(frozen=True)
class Caller:
    workspace_id: str
    livemode: bool
    key_id: str | None = None
    key_kind: KeyKind = KeyKind.ACCOUNT
    instance_id: str | None = None  # set for instance keys: the one instance they reach
    scopes: frozenset[str] | None = None  # OAuth grants; None: an API key, every scope
    client_id: str | None = None  # the OAuth client (agent) acting, for its own budget
    user_id: str | None = None  # the person an OAuth grant (or a signed-in page) acts for
    # The person who made the calling account key (it acts for them, never above them).
    key_creator_id: str | None = None
    # What the caller may do now: an account key's role lowered to its creator's current
    # role, or the person's current membership role (least privilege unless the
    # authenticator says otherwise).
    role: Role = Role.MEMBER
    # A person who has not yet confirmed their email address (where that is required):
    # see require_proven_email.
    email_unproven: bool = False
    # Where the request came from, for the audit log ("local" for stdio and the CLI).
    address: str | None = None
    user_agent: str | None = None

    def require_account(self) -> None:
        if self.key_kind is not KeyKind.ACCOUNT:
            raise PermissionDenied(
                "instance keys (auxk_) can only call their instance's inference endpoint; "
                "use an account key (auxen_live_/auxen_test_) for this"
            )

    def require(self, permission: Permission) -> None:
        """Refuse, before any work, a caller whose role does not hold `permission`, and a
        test-mode caller asking for what is not kept per mode."""
        if not self.livemode and permission not in PER_MODE:
            raise PermissionDenied(
                f"test-mode callers act on test-mode objects only, and {permission.value} "
                "concerns the whole workspace: use a live key (auxen_live_) or the "
                "dashboard in live mode"
            )
        if self.key_kind is KeyKind.INSTANCE and permission in INSTANCE_KEY_PERMISSIONS:
            return
        self.require_account()
        if not role_may(self.role, permission):
            needed = LEAST_ROLE[permission]
            raise PermissionDenied(
                f"this needs the {needed.value} role in the workspace ({permission.value}); "
                f"this {self.principal} acts as {self.role.value}: ask an owner or admin"
            )

    def require_proven_email(self, act: str) -> None:
        """Refuse `act` to a person who has not confirmed their email address yet. The
        acts that need it: spending money (buying credits), bringing people in
        (inviting), making account keys (a key could do both in their place), and
        connecting an agent (the consent page)."""
        if self.email_unproven:
            raise PermissionDenied(
                f"confirm your email address before you {act}: follow the link we sent "
                "you, or send a new one from your account page"
            )

    def may(self, permission: Permission) -> bool:
        return (
            self.key_kind is KeyKind.ACCOUNT
            and role_may(self.role, permission)
            and (self.livemode or permission in PER_MODE)
        )

    def reaches(self, livemode: bool) -> bool:
        """Whether this caller may act on an object of `livemode`: test mode never
        reaches live mode."""
        return self.livemode or not livemode

    @asynccontextmanager
    async def scoped(
        self, db: Database, *, both_modes: bool = False
    ) -> AsyncIterator[AsyncSession]:
        """A session that sees and writes only this caller's workspace and mode.
        `both_modes`: a live-mode caller also sees test-mode rows: for account-key
        management (the dashboard and live keys manage both modes) and for what acts on
        the workspace as a whole (deleting it, the provider-credential checks); never
        widens a test-mode caller."""
        mode = None if both_modes and self.livemode else self.livemode
        async with mode_scoped(db, self.workspace_id, mode) as session:
            yield session

    @property
    def person_id(self) -> str | None:
        """The person this caller acts for: the signed-in person, an agent's person, or
        the creator of the calling key."""
        return self.user_id or self.key_creator_id

    @property
    def principal(self) -> str:
        if self.client_id is not None:
            return "agent"
        return "API key" if self.key_id else "caller"
