"""Creating a workspace with its owner and first account key (`auxen init`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlmodel import col, select

from auxen.runtime import Runtime
from auxen.store.models import KeyKind, Membership, Role, User, Workspace
from auxen.tools.errors import InvalidArgument
from auxen.tools.keys import KeyMaker, new_key_row


@dataclass(frozen=True)
class NewWorkspace:
    workspace: Workspace
    owner: User
    key_plaintext: str


async def create_workspace(
    rt: Runtime, *, name: str, owner_email: str, livemode: bool = True
) -> NewWorkspace:
    name = name.strip()
    email = owner_email.strip().lower()
    if not 1 <= len(name) <= 200:
        raise InvalidArgument("workspace name must be 1-200 characters", param="name")
    if "@" not in email or len(email) > 320:
        raise InvalidArgument("owner email must be an email address", param="email")
    async with rt.db.system() as session:
        user = (await session.exec(select(User).where(col(User.email) == email))).first()
        if user is None:
            # An operator vouches for the address (`auxen init`): nothing to confirm.
            user = User(email=email, email_verified_at=datetime.now(UTC))
            session.add(user)
        workspace = Workspace(name=name)
        session.add(workspace)
        await session.flush()
        session.add(Membership(workspace_id=workspace.id, user_id=user.id, role=Role.OWNER))
        _, plaintext = new_key_row(
            session, workspace.id, KeyKind.ACCOUNT, livemode=livemode, name="first key",
            role=Role.OWNER, maker=KeyMaker(user.id, "init"),
        )  # fmt: skip
        await session.commit()
    return NewWorkspace(workspace, user, plaintext)
