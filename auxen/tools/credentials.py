"""Bring your own key: a workspace's own provider credentials (a RunPod API key, a
Hugging Face token), sealed under the workspace's key and never returned by any API.

A stored RunPod key makes the workspace's pods run in its own RunPod account; a stored
Hugging Face token is handed to its instances' vLLM for gated models. Only the
fingerprint and the last four characters are ever shown.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select

from auxen.auth.byok import fingerprint
from auxen.auth.sealing import seal
from auxen.inference.lifecycle import LIVE_STATES
from auxen.runtime import Runtime
from auxen.store.models import CredentialProvider, Instance, ProviderCredential
from auxen.tools import audit
from auxen.tools.context import Caller
from auxen.tools.errors import Conflict, InvalidArgument, NotFound
from auxen.tools.permissions import Permission

# Printable, no spaces: what every provider's keys look like; bounded so a pasted file
# is refused, not stored.
_SECRET = re.compile(r"^[\x21-\x7e]{8,512}$")
_PREFIX = {CredentialProvider.HUGGINGFACE: "hf_"}


class SetCredentialRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secret: str = Field(
        min_length=8,
        max_length=512,
        description="The provider's API key or token; stored sealed, never shown again",
    )


class CredentialView(BaseModel):
    provider: CredentialProvider
    fingerprint: str = Field(description="Tells two stored secrets apart; reveals nothing")
    last4: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: ProviderCredential) -> CredentialView:
        return cls(
            provider=row.provider,
            fingerprint=row.fingerprint,
            last4=row.last4,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


def parse_provider(value: str) -> CredentialProvider:
    try:
        return CredentialProvider(value)
    except ValueError:
        known = ", ".join(p.value for p in CredentialProvider)
        raise InvalidArgument(
            f"unknown provider {value[:40]!r}; credentials can be stored for: {known}",
            param="provider",
        ) from None


async def set_credential(
    rt: Runtime, caller: Caller, provider_name: str, req: SetCredentialRequest
) -> CredentialView:
    caller.require(Permission.PROVIDER_CREDENTIALS)
    provider = parse_provider(provider_name)
    secret = req.secret
    if not _SECRET.match(secret):
        raise InvalidArgument(
            "the secret must be 8-512 printable characters without spaces", param="secret"
        )
    prefix = _PREFIX.get(provider)
    if prefix and not secret.startswith(prefix):
        raise InvalidArgument(
            f"a {provider.value} token starts with {prefix!r}; check what was pasted",
            param="secret",
        )
    await _refuse_while_pods_run(rt, caller, provider)
    master = rt.settings.master_key_bytes
    now = datetime.now(UTC)
    async with caller.scoped(rt.db) as session:
        row = (
            await session.exec(
                select(ProviderCredential).where(col(ProviderCredential.provider) == provider)
            )
        ).first()
        if row is None:
            row = ProviderCredential(
                workspace_id=caller.workspace_id,
                provider=provider,
                sealed=b"",
                fingerprint="",
                last4="",
                created_at=now,
            )
        row.sealed = seal(master, caller.workspace_id, secret)
        row.fingerprint = fingerprint(master, caller.workspace_id, secret)
        row.last4 = secret[-4:]
        row.updated_at = now
        session.add(row)
        await session.commit()
    await audit.record_for(
        rt, caller, "credential.set", target_type="provider_credential", target_id=row.id,
        detail={"provider": provider.value},
    )  # fmt: skip
    return CredentialView.of(row)


async def list_credentials(rt: Runtime, caller: Caller) -> list[CredentialView]:
    caller.require(Permission.PROVIDER_CREDENTIALS)
    async with caller.scoped(rt.db) as session:
        rows = (
            await session.exec(
                select(ProviderCredential).order_by(col(ProviderCredential.provider))
            )
        ).all()
    return [CredentialView.of(r) for r in rows]


async def delete_credential(rt: Runtime, caller: Caller, provider_name: str) -> None:
    caller.require(Permission.PROVIDER_CREDENTIALS)
    provider = parse_provider(provider_name)
    async with caller.scoped(rt.db) as session:
        row = (
            await session.exec(
                select(ProviderCredential).where(col(ProviderCredential.provider) == provider)
            )
        ).first()
        await _refuse_while_pods_run(rt, caller, provider)
        if row is None:
            raise NotFound(
                f"this workspace stores no {provider.value} credential", param="provider"
            )
        await session.delete(row)
        await session.commit()
    await audit.record_for(
        rt, caller, "credential.delete", target_type="provider_credential", target_id=row.id,
        detail={"provider": provider.value},
    )  # fmt: skip


async def _refuse_while_pods_run(rt: Runtime, caller: Caller, provider: CredentialProvider) -> None:
    """A workspace's instances run in the RunPod account its key names: changing the key
    under them would lose them (and leave them billing in the old account)."""
    if provider is not CredentialProvider.RUNPOD:
        return
    async with caller.scoped(rt.db, both_modes=True) as session:  # pods of either mode
        running = (
            await session.exec(
                select(sa.func.count())
                .select_from(Instance)
                .where(col(Instance.provider) == "runpod")
                .where(col(Instance.state).in_([s.value for s in LIVE_STATES]))
            )
        ).one()
    if running:
        raise Conflict(
            f"{running} RunPod instance(s) of this workspace run in the account of the stored "
            "key; destroy them before changing or removing it",
            param="provider",
        )
