"""Who is calling: the request context every operation receives."""

from __future__ import annotations

from dataclasses import dataclass

from auxen.store.models import KeyKind, Role
from auxen.tools.errors import PermissionDenied
from auxen.tools.permissions import INSTANCE_KEY_PERMISSIONS, LEAST_ROLE, Permission, role_may


@dataclass(frozen=True)
class Caller:
    workspace_id: str
    livemode: bool
    key_id: str | None = None
    key_kind: KeyKind = KeyKind.ACCOUNT
    instance_id: str | None = None  # set for instance keys: the one instance they reach
    scopes: frozenset[str] | None = None  # OAuth grants; None: an API key, every scope
    client_id: str | None = None  # the OAuth client (agent) acting, for its own budget
    user_id: str | None = None  # the person an OAuth grant acts for
    # The key's role, or the person's current membership role (least privilege unless
    # the authenticator says otherwise).
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
        """Refuse, before any work, a caller whose role does not hold `permission`."""
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
        return self.key_kind is KeyKind.ACCOUNT and role_may(self.role, permission)

    @property
    def principal(self) -> str:
        if self.client_id is not None:
            return "agent"
        return "API key" if self.key_id else "caller"
