"""Remembered consent: once a person allows a client some scopes in a workspace, a later
request from that client goes straight back to it only when it is covered exactly: the
same person, client, resource and redirect URI, and no more than those scopes. Anything
else (another redirect URI, another resource, one more scope) shows the consent page
again. The person sees and revokes these on their account page; revoking also ends
every token the client holds for them. Approving again replaces the earlier consent."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import col, select

from auxen.auth.oauth.provider import OAuthProvider
from auxen.store.ids import new_id
from auxen.store.models import Membership, OAuthConsent


class Consents:
    def __init__(self, provider: OAuthProvider) -> None:
        self.provider = provider
        self.db = provider.db

    async def remembered(
        self, user_id: str, client_id: str, resource: str, redirect_uri: str, scopes: list[str]
    ) -> OAuthConsent | None:
        """The consent that already covers this request, if the person is still a member
        of its workspace."""
        async with self.db.system() as session:
            found = (
                await session.exec(
                    select(OAuthConsent)
                    .join(
                        Membership,
                        sa.and_(
                            col(Membership.workspace_id) == col(OAuthConsent.workspace_id),
                            col(Membership.user_id) == col(OAuthConsent.user_id),
                        ),
                    )
                    .where(col(OAuthConsent.user_id) == user_id)
                    .where(col(OAuthConsent.client_id) == client_id)
                    .where(col(OAuthConsent.resource) == resource)
                    .where(col(OAuthConsent.redirect_uri) == redirect_uri)
                )
            ).first()
        if found is None or not set(scopes) <= set(found.scopes.split()):
            return None
        return found

    async def remember(
        self, user_id: str, client_id: str, client_name: str, workspace_id: str,
        scopes: list[str], *, resource: str, redirect_uri: str,
    ) -> None:  # fmt: skip
        now = datetime.now(UTC)
        async with self.db.engine.begin() as conn:
            await conn.execute(
                sa.delete(OAuthConsent).where(
                    col(OAuthConsent.user_id) == user_id, col(OAuthConsent.client_id) == client_id
                )
            )
            await conn.execute(
                sa.insert(OAuthConsent).values(
                    id=new_id("cns"),
                    user_id=user_id,
                    client_id=client_id,
                    client_name=client_name[:200],
                    workspace_id=workspace_id,
                    scopes=" ".join(scopes),
                    resource=resource,
                    redirect_uri=redirect_uri,
                    created_at=now,
                    updated_at=now,
                )
            )

    async def of_user(self, user_id: str) -> list[OAuthConsent]:
        async with self.db.system() as session:
            rows = await session.exec(
                select(OAuthConsent)
                .where(col(OAuthConsent.user_id) == user_id)
                .order_by(col(OAuthConsent.updated_at).desc())
            )
            return list(rows.all())

    async def revoke(self, user_id: str, consent_id: str) -> OAuthConsent | None:
        """Forget the consent and revoke the client's tokens for this person; the
        consent that was revoked, or None if there was none."""
        async with self.db.system() as session:
            found = await session.get(OAuthConsent, consent_id[:32])
            if found is None or found.user_id != user_id:
                return None
            await session.delete(found)
            await session.commit()
        await self.provider.revoke_grants(user_id, found.client_id)
        return found
