"""People's accounts: sign up (a workspace with the new user as its owner), sign in,
change the password."""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from auxen.auth import throttle
from auxen.auth.passwords import check_strength, hash_password, verify_password
from auxen.runtime import Runtime
from auxen.store.models import Membership, Role, User, Workspace
from auxen.tools.errors import Conflict, InvalidArgument, Unauthenticated

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}$")


@dataclass(frozen=True)
class SignedUp:
    user: User
    workspace: Workspace


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if not _EMAIL.match(email) or len(email) > 320:
        raise InvalidArgument("enter an email address like you@example.com", param="email")
    return email


async def sign_up(rt: Runtime, *, email: str, password: str, workspace_name: str) -> SignedUp:
    email = normalise_email(email)
    check_strength(password, email=email)
    name = workspace_name.strip()
    if not 1 <= len(name) <= 200:
        raise InvalidArgument("the workspace name must be 1-200 characters", param="workspace")
    user = User(email=email, password_hash=await hash_password(password))
    workspace = Workspace(name=name)
    try:
        async with rt.db.system() as session:
            if (await session.exec(select(User).where(col(User.email) == email))).first():
                raise Conflict("an account with this email already exists; sign in instead")
            session.add_all([user, workspace])
            await session.flush()
            session.add(Membership(workspace_id=workspace.id, user_id=user.id, role=Role.OWNER))
            await session.commit()
    except IntegrityError:  # the same email, signed up concurrently
        raise Conflict("an account with this email already exists; sign in instead") from None
    return SignedUp(user, workspace)


async def sign_in(rt: Runtime, *, email: str, password: str, address: str) -> User:
    """The user with this email and password; one message for every failure. Repeated
    failures for an account or from an address raise RateLimited (see auth.throttle)."""
    try:
        email = normalise_email(email)
    except InvalidArgument:
        email = ""
    account_key = f"login:account:{email or '-'}"
    subjects = {account_key: throttle.ACCOUNT, f"login:address:{address}": throttle.ADDRESS}
    guard = throttle.Throttle(rt.db)
    await guard.admit(subjects)
    async with rt.db.system() as session:
        user = (await session.exec(select(User).where(col(User.email) == email))).first()
    stored = user.password_hash if user is not None else None
    if not await verify_password(stored, password[:1024]) or user is None:
        await guard.failed(subjects)
        raise Unauthenticated("wrong email or password")
    await guard.succeeded(account_key)
    return user


async def workspaces_of(rt: Runtime, user: User) -> list[tuple[Workspace, Role]]:
    async with rt.db.system() as session:
        rows = (
            await session.exec(
                select(Workspace, Membership.role)
                .join(Membership, col(Membership.workspace_id) == col(Workspace.id))
                .where(col(Membership.user_id) == user.id)
                .order_by(col(Workspace.created_at))
            )
        ).all()
    return [(w, Role(r)) for w, r in rows]


async def change_password(rt: Runtime, user: User, *, current: str, new: str, address: str) -> None:
    """Replace the person's password once the current one is given (guessing it is
    throttled like signing in); a weak new password is refused and changes nothing."""
    subjects = {
        f"login:account:{user.email}": throttle.ACCOUNT,
        f"login:address:{address}": throttle.ADDRESS,
    }
    guard = throttle.Throttle(rt.db)
    await guard.admit(subjects)
    async with rt.db.system() as session:
        stored = await session.get(User, user.id)
    if stored is None or not await verify_password(stored.password_hash, current[:1024]):
        await guard.failed(subjects)
        raise Unauthenticated("the current password is wrong", param="current_password")
    await guard.succeeded(f"login:account:{user.email}")
    check_strength(new, email=user.email)
    hashed = await hash_password(new)
    async with rt.db.system() as session:
        await session.exec(
            sa.update(User).where(col(User.id) == user.id).values(password_hash=hashed)
        )
        await session.commit()
