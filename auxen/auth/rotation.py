"""Rotating the master key: every sealed value is opened under the old key and sealed
again under the new one, in one transaction, so the database never holds a mix.

`SEALED` lists every sealed column and whose key seals it; a test fails when a model
gains a sealed column (a `*_sealed` or `sealed` binary column) not listed here.
Short-lived sealed tokens (sign-in challenges, pending authorizations, enrolments) are
not stored; they simply stop opening, and whoever held one starts that step again.
Values that already open under the new key are left as they are, so a rotation that
was interrupted (nothing is written unless all of it succeeds) can simply be run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import SQLModel, col, select

from auxen.auth.byok import fingerprint
from auxen.auth.sealing import UnsealError, seal, unseal
from auxen.store.db import Database
from auxen.store.models import (
    ConversationTurn,
    Instance,
    ProviderCredential,
    User,
    WebhookEndpoint,
    Workspace,
)


@dataclass(frozen=True)
class SealedColumn:
    model: type[SQLModel]
    column: str
    subject: str  # the attribute naming whose key seals it (a workspace's or a user's)


SEALED: list[SealedColumn] = [
    SealedColumn(Instance, "upstream_key_sealed", "workspace_id"),
    SealedColumn(Workspace, "alert_webhook_sealed", "id"),
    SealedColumn(User, "totp_secret_sealed", "id"),
    SealedColumn(ProviderCredential, "sealed", "workspace_id"),
    SealedColumn(ConversationTurn, "sealed", "workspace_id"),
    SealedColumn(WebhookEndpoint, "secret_sealed", "workspace_id"),
]


class RotationError(RuntimeError):
    """A sealed value opens under neither key: nothing was changed."""


@dataclass
class RotationReport:
    resealed: dict[str, int]
    already_new: int = 0


async def rotate_master_key(db: Database, old: bytes, new: bytes) -> RotationReport:
    if old == new:
        raise RotationError("the new master key is the old one")
    report = RotationReport(resealed={})
    async with db.system() as session:
        for sealed in SEALED:
            attr: Any = getattr(sealed.model, sealed.column)
            rows = (await session.exec(select(sealed.model).where(col(attr).is_not(None)))).all()
            name = f"{sealed.model.__tablename__}.{sealed.column}"
            done = 0
            for row in rows:
                subject = getattr(row, sealed.subject)
                value = getattr(row, sealed.column)
                try:
                    plain = unseal(old, subject, value)
                except UnsealError:
                    try:
                        unseal(new, subject, value)
                    except UnsealError:
                        raise RotationError(
                            f"{name} of {subject} opens under neither key; nothing was changed"
                        ) from None
                    report.already_new += 1
                    continue
                setattr(row, sealed.column, seal(new, subject, plain))
                if isinstance(row, ProviderCredential):
                    row.fingerprint = fingerprint(new, subject, plain)
                session.add(row)
                done += 1
            report.resealed[name] = done
        await session.commit()
    return report
