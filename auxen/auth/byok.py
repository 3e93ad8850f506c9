"""A workspace's own provider credentials (BYOK), opened only for the call that needs
them: a launch (the Hugging Face token goes into the instance's environment) or a
provider request (the RunPod key authenticates it). Managing them: auxen/tools/credentials.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nacl.encoding import RawEncoder
from nacl.hash import blake2b
from sqlmodel import select

from auxen.auth.sealing import unseal, workspace_key
from auxen.store.db import Database
from auxen.store.models import CredentialProvider, ProviderCredential


@dataclass(frozen=True)
class WorkspaceCredentials:
    """A workspace's unsealed credentials, for one launch or one provider call."""

    runpod_api_key: str | None = field(default=None, repr=False)
    hf_token: str | None = field(default=None, repr=False)


def fingerprint(master_key: bytes, workspace_id: str, secret: str) -> str:
    digest = blake2b(
        secret.encode(),
        digest_size=8,
        key=workspace_key(master_key, workspace_id),
        person=b"auxen-cred-fp",
        encoder=RawEncoder,
    )
    return "fp_" + bytes(digest).hex()


async def workspace_credentials(
    db: Database, master_key: bytes, workspace_id: str
) -> WorkspaceCredentials:
    """The workspace's credentials, unsealed for the caller's immediate use only."""
    async with db.scoped(workspace_id) as session:
        rows = (await session.exec(select(ProviderCredential))).all()
    opened = {r.provider: unseal(master_key, workspace_id, r.sealed) for r in rows}
    return WorkspaceCredentials(
        runpod_api_key=opened.get(CredentialProvider.RUNPOD),
        hf_token=opened.get(CredentialProvider.HUGGINGFACE),
    )
