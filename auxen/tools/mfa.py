"""A person's second factor: enrol a TOTP authenticator, pass it at sign-in (or spend a
recovery code), replace the recovery codes, turn it off.

The TOTP secret is sealed at rest under a key derived for the user; until enrolment is
confirmed with a first code it lives only inside a sealed, short-lived token in the page.
A code is accepted once: the step it matched is recorded with a conditional UPDATE, so
two concurrent sign-ins with the same code cannot both pass. Wrong codes count against
the account and the client address like wrong passwords (see auth.throttle).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select

from auxen.auth import throttle, totp
from auxen.auth.passwords import verify_password
from auxen.auth.sealing import SealedTokens, seal, unseal
from auxen.notify import Event, EventType, notify_user
from auxen.runtime import Runtime
from auxen.store.models import RecoveryCode, User
from auxen.tools.errors import Conflict, InvalidArgument, Unauthenticated

ENROLMENT_TTL_S = 15 * 60
CHALLENGE_TTL_S = 5 * 60


@dataclass(frozen=True)
class Enrolment:
    secret: str  # shown to the person (typed into an authenticator without a camera)
    uri: str
    qr_svg: str
    token: str  # carries the secret, sealed, to the confirming request


def _enrolments(rt: Runtime) -> SealedTokens:
    return SealedTokens(rt.settings.master_key_bytes, "totp enrolment")


def challenges(rt: Runtime) -> SealedTokens:
    """Tokens for a sign-in whose password was right and whose second factor is due."""
    return SealedTokens(rt.settings.master_key_bytes, "sign-in second factor")


def begin_enrolment(rt: Runtime, user: User) -> Enrolment:
    if user.has_totp:
        raise Conflict("two-factor authentication is already on; turn it off first")
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, user.email)
    token = _enrolments(rt).issue({"user_id": user.id, "secret": secret}, ENROLMENT_TTL_S)
    return Enrolment(secret=secret, uri=uri, qr_svg=totp.qr_svg(uri), token=token)


def reopen_enrolment(rt: Runtime, user: User, token: str) -> Enrolment:
    """The enrolment behind `token` again (to show the page once more after a wrong code)."""
    secret = _enrolment_secret(rt, user, token)
    uri = totp.provisioning_uri(secret, user.email)
    return Enrolment(secret=secret, uri=uri, qr_svg=totp.qr_svg(uri), token=token)


def _enrolment_secret(rt: Runtime, user: User, token: str) -> str:
    pending = _enrolments(rt).open(token)
    if pending is None or pending.get("user_id") != user.id:
        raise InvalidArgument("this set-up page expired; start again", param="token")
    return str(pending["secret"])


async def confirm_enrolment(
    rt: Runtime, user: User, *, token: str, code: str, address: str
) -> list[str]:
    """Turn TOTP on once the person proves their authenticator has the secret; the new
    recovery codes, shown once."""
    secret = _enrolment_secret(rt, user, token)
    attempt = await throttle.Throttle(rt.db).admit(_subjects(user.id, address))
    step = totp.matching_step(secret, code)
    if step is None:
        await attempt.failed()
        raise InvalidArgument(
            "that code does not match; check the time on your device and enter the "
            "current 6-digit code",
            param="code",
        )
    async with rt.db.engine.begin() as conn:
        turned_on = await conn.execute(
            sa.update(User)
            .where(col(User.id) == user.id, col(User.totp_secret_sealed).is_(None))
            .values(
                totp_secret_sealed=seal(rt.settings.master_key_bytes, user.id, secret),
                totp_enabled_at=datetime.now(UTC),
                totp_last_step=step,
            )
        )
        if turned_on.rowcount != 1:
            raise Conflict("two-factor authentication is already on")
        codes = await _replace_recovery_codes(conn, user.id)
    await attempt.succeeded(clear=[subjects_account(user.id)])
    await notify_user(rt.db, user.id, Event(EventType.MFA_ENABLED, {"user_id": user.id}))
    return codes


async def verify_second_factor(rt: Runtime, user_id: str, code: str, *, address: str) -> User:
    """The user, if `code` is their current TOTP code (never used before) or one of their
    unused recovery codes; otherwise Unauthenticated, or RateLimited after many tries."""
    # Counted before it is judged, so codes guessed concurrently queue here.
    attempt = await throttle.Throttle(rt.db).admit(_subjects(user_id, address))
    code = code.strip()[:64]
    async with rt.db.system() as session:
        user = await session.get(User, user_id)
    if user is None or user.totp_secret_sealed is None:
        raise Unauthenticated("two-factor authentication is not on for this account")
    if not await _spend(rt, user, code):
        await attempt.failed()
        raise Unauthenticated("that code is not valid, or was already used")
    await attempt.succeeded(clear=[subjects_account(user_id)])
    return user


async def _spend(rt: Runtime, user: User, code: str) -> bool:
    now = datetime.now(UTC)
    async with rt.db.engine.begin() as conn:
        if totp.looks_like_totp(code.replace(" ", "")):
            assert user.totp_secret_sealed is not None
            secret = unseal(rt.settings.master_key_bytes, user.id, user.totp_secret_sealed)
            step = totp.matching_step(secret, code)
            if step is None:
                return False
            spent = await conn.execute(
                sa.update(User)
                .where(col(User.id) == user.id)
                .where(sa.or_(col(User.totp_last_step).is_(None), col(User.totp_last_step) < step))
                .values(totp_last_step=step)
            )
        else:
            spent = await conn.execute(
                sa.update(RecoveryCode)
                .where(col(RecoveryCode.code_hash) == totp.recovery_hash(code))
                .where(col(RecoveryCode.user_id) == user.id, col(RecoveryCode.used_at).is_(None))
                .values(used_at=now)
            )
        return bool(spent.rowcount == 1)


async def replace_recovery_codes(rt: Runtime, user: User, *, code: str, address: str) -> list[str]:
    """New recovery codes (the old ones stop working), after a current second factor."""
    await verify_second_factor(rt, user.id, code, address=address)
    async with rt.db.engine.begin() as conn:
        return await _replace_recovery_codes(conn, user.id)


async def disable(rt: Runtime, user: User, *, password: str, code: str, address: str) -> None:
    """Turn the second factor off: needs the password and a current code (or recovery
    code), so a browser left signed in cannot quietly weaken the account."""
    attempt = await throttle.Throttle(rt.db).admit(_subjects(user.id, address))
    if not await verify_password(user.password_hash, password[:1024]):
        await attempt.failed()
        raise Unauthenticated("wrong password")
    await attempt.succeeded()  # the password was right; the code is judged on its own
    await verify_second_factor(rt, user.id, code, address=address)
    async with rt.db.engine.begin() as conn:
        await conn.execute(sa.delete(RecoveryCode).where(col(RecoveryCode.user_id) == user.id))
        await conn.execute(
            sa.update(User)
            .where(col(User.id) == user.id)
            .values(totp_secret_sealed=None, totp_enabled_at=None, totp_last_step=None)
        )
    await notify_user(rt.db, user.id, Event(EventType.MFA_DISABLED, {"user_id": user.id}))


async def unused_recovery_codes(rt: Runtime, user: User) -> int:
    async with rt.db.system() as session:
        rows = await session.exec(
            select(sa.func.count())
            .select_from(RecoveryCode)
            .where(col(RecoveryCode.user_id) == user.id, col(RecoveryCode.used_at).is_(None))
        )
        return int(rows.one())


async def _replace_recovery_codes(conn: AsyncConnection, user_id: str) -> list[str]:
    codes = totp.new_recovery_codes()
    await conn.execute(sa.delete(RecoveryCode).where(col(RecoveryCode.user_id) == user_id))
    await conn.execute(
        sa.insert(RecoveryCode),
        [
            {
                "code_hash": totp.recovery_hash(c),
                "user_id": user_id,
                "created_at": datetime.now(UTC),
            }
            for c in codes
        ],
    )
    return codes


def subjects_account(user_id: str) -> str:
    return f"mfa:user:{user_id}"


def _subjects(user_id: str, address: str) -> dict[str, throttle.Policy]:
    return {subjects_account(user_id): throttle.ACCOUNT, f"mfa:address:{address}": throttle.ADDRESS}
