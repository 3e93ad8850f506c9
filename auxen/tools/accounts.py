"""People's accounts: sign up (a workspace with the new user as its owner), prove the
email address, sign in, change the password.

Where email proof is on (`AUXEN_EMAIL_VERIFICATION`, the default in production), sign-up
answers the same whether or not the address already has an account: a new address gets
an unconfirmed account and a confirmation link, an address with a confirmed account gets
a note saying someone tried, and one whose account is still unconfirmed gets a new link
(carrying the new password, see `auth.email_proof`). Nobody is signed in by sign-up;
the person signs in once they have the link. Sign-ups are limited per address and per
client address before anything is hashed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from auxen.auth import email_proof, throttle, web_sessions
from auxen.auth.passwords import check_strength, hash_password, verify_password
from auxen.notify.account_mail import AccountMail, address_taken, confirm_address
from auxen.runtime import Runtime
from auxen.store.models import Membership, Role, User, Workspace
from auxen.tools.errors import Conflict, InvalidArgument, Unauthenticated

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}$")
CONFIRMATION_RESENDS_PER_HOUR = 5


@dataclass(frozen=True)
class SignedUp:
    user: User
    workspace: Workspace


@dataclass(frozen=True)
class SignUpAnswer:
    """What sign-up did: `signed_up` when the person may be signed in at once (email
    proof off); otherwise nothing the answer may show, and `mail` to send after it."""

    signed_up: SignedUp | None
    mail: AccountMail | None


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if not _EMAIL.match(email) or len(email) > 320:
        raise InvalidArgument("enter an email address like you@example.com", param="email")
    return email


def needs_email_proof(rt: Runtime, user: User) -> bool:
    """Whether `user` must still confirm their address before the things that need it."""
    return rt.settings.requires_email_proof and user.email_verified_at is None


async def sign_up(
    rt: Runtime, *, email: str, password: str, workspace_name: str, address: str,
    next_url: str = "/dashboard",
) -> SignUpAnswer:  # fmt: skip
    email = normalise_email(email)
    check_strength(password, email=email)
    name = workspace_name.strip()
    if not 1 <= len(name) <= 200:
        raise InvalidArgument("the workspace name must be 1-200 characters", param="workspace")
    # Before the argon2 hash: a flood of sign-ups costs a counter row each, not a hash.
    guard = throttle.Throttle(rt.db)
    hour = timedelta(hours=1)
    await guard.spend(
        f"signup:address:{address}", limit=rt.settings.signups_per_address_per_hour, window=hour
    )
    await guard.spend(
        f"signup:email:{email}", limit=rt.settings.signups_per_email_per_hour, window=hour
    )
    hashed = await hash_password(password)  # every path pays it: timing tells nothing
    if not rt.settings.requires_email_proof:
        return SignUpAnswer(await _create(rt, email, hashed, name, verified=False), None)
    async with rt.db.system() as session:
        existing = (await session.exec(select(User).where(col(User.email) == email))).first()
    if existing is not None and existing.email_verified_at is not None:
        return SignUpAnswer(None, address_taken(email, rt.settings.base_url))
    if existing is not None:  # unconfirmed: a new link, carrying this sign-up's password
        proof = email_proof.Proof(existing.id, email, next_url, password_hash=hashed)
        return SignUpAnswer(None, _confirmation(rt, proof))
    try:
        made = await _create(rt, email, hashed, name, verified=False)
    except Conflict:  # the same address, signed up concurrently: that one sends the link
        return SignUpAnswer(None, None)
    return SignUpAnswer(None, _confirmation(rt, email_proof.Proof(made.user.id, email, next_url)))


async def _create(rt: Runtime, email: str, hashed: str, name: str, *, verified: bool) -> SignedUp:
    user = User(
        email=email,
        password_hash=hashed,
        email_verified_at=datetime.now(UTC) if verified else None,
    )
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


def _confirmation(rt: Runtime, proof: email_proof.Proof) -> AccountMail:
    link = email_proof.issue_link(rt.settings.master_key_bytes, rt.settings.base_url, proof)
    return confirm_address(proof.email, link, hours=email_proof.TTL_S // 3600)


async def confirmation_for(rt: Runtime, user: User, *, next_url: str = "/account") -> AccountMail:
    """A new confirmation link for a signed-in person who has not confirmed yet (a few
    an hour); Conflict when there is nothing to confirm."""
    if not needs_email_proof(rt, user):
        raise Conflict("your email address is already confirmed")
    await throttle.Throttle(rt.db).spend(
        f"confirm:user:{user.id}", limit=CONFIRMATION_RESENDS_PER_HOUR, window=timedelta(hours=1)
    )
    return _confirmation(rt, email_proof.Proof(user.id, user.email, next_url))


def open_confirmation(rt: Runtime, token: str) -> email_proof.Proof:
    proof = email_proof.open_token(rt.settings.master_key_bytes, token)
    if proof is None:
        raise InvalidArgument(
            "this confirmation link expired or is not valid; sign in and send a new one "
            "from your account page",
            param="token",
        )
    return proof


async def confirm_email(rt: Runtime, token: str) -> email_proof.Proof:
    """Mark the link's address as proven. A link that carries a password (a later
    sign-up of an unconfirmed account) also makes it the account's password and signs
    out every browser, so an account someone else opened with this address is theirs no
    longer. Following a link again changes nothing."""
    proof = open_confirmation(rt, token)
    values: dict[str, object] = {"email_verified_at": datetime.now(UTC)}
    if proof.password_hash is not None:
        values["password_hash"] = proof.password_hash
    async with rt.db.engine.begin() as conn:
        confirmed = await conn.execute(
            sa.update(User)
            .where(col(User.id) == proof.user_id, col(User.email) == proof.email)
            .where(col(User.email_verified_at).is_(None))
            .values(**values)
        )
    if confirmed.rowcount == 1 and proof.password_hash is not None:
        await web_sessions.end_others(rt.db, proof.user_id, None)
    return proof


async def sign_in(rt: Runtime, *, email: str, password: str, address: str) -> User:
    """The user with this email and password; one message for every failure. Repeated
    failures for an account or from an address raise RateLimited (see auth.throttle)."""
    try:
        email = normalise_email(email)
    except InvalidArgument:
        email = ""
    account_key = f"login:account:{email or '-'}"
    subjects = {account_key: throttle.ACCOUNT, f"login:address:{address}": throttle.ADDRESS}
    attempt = await throttle.Throttle(rt.db).admit(subjects)  # counted before it is judged
    async with rt.db.system() as session:
        user = (await session.exec(select(User).where(col(User.email) == email))).first()
    stored = user.password_hash if user is not None else None
    if not await verify_password(stored, password[:1024]) or user is None:
        await attempt.failed()
        raise Unauthenticated("wrong email or password")
    await attempt.succeeded(clear=[account_key])
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
    attempt = await throttle.Throttle(rt.db).admit(subjects)  # counted before it is judged
    async with rt.db.system() as session:
        stored = await session.get(User, user.id)
    if stored is None or not await verify_password(stored.password_hash, current[:1024]):
        await attempt.failed()
        raise Unauthenticated("the current password is wrong", param="current_password")
    await attempt.succeeded(clear=[f"login:account:{user.email}"])
    check_strength(new, email=user.email)
    hashed = await hash_password(new)
    async with rt.db.system() as session:
        await session.exec(
            sa.update(User).where(col(User.id) == user.id).values(password_hash=hashed)
        )
        await session.commit()
