"""Who is calling: the request context every operation receives."""

from __future__ import annotations

from dataclasses import dataclass

from auxen.store.models import KeyKind
from auxen.tools.errors import PermissionDenied


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

    def require_account(self) -> None:
        if self.key_kind is not KeyKind.ACCOUNT:
            raise PermissionDenied(
                "instance keys (auxk_) can only call their instance's inference endpoint; "
                "use an account key (auxen_live_/auxen_test_) for this"
            )
