"""The MCP SDK's authorization-server provider protocol over our own tables.

Codes, access tokens and refresh tokens are random, handed out once, and stored only as
SHA-256. A code is spent atomically; spending it twice revokes every token issued from
it. Refresh tokens rotate on every use; presenting a rotated one revokes the family.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    IdentityAssertionParams,
    RefreshToken,
    RegistrationError,
    TokenError,
)
from mcp.shared.auth import OAuthClientInformationFull
from mcp.shared.auth import OAuthToken as TokenResponse
from pydantic import AnyUrl
from sqlmodel import col

from auxen.auth.oauth import (
    ACCESS_PREFIX,
    DEFAULT_SCOPES,
    REFRESH_PREFIX,
    SCOPES,
    resource_url,
    same_resource,
)
from auxen.auth.oauth.cimd import DocumentFetcher, is_document_url
from auxen.auth.oauth.redirect_uris import RedirectUriError, check_redirect_uri
from auxen.auth.sealing import SealedTokens
from auxen.config import Settings
from auxen.outbound import tenant_policy
from auxen.store.db import Database
from auxen.store.ids import new_id
from auxen.store.models import OAuthClient, OAuthCode, OAuthConsent, OAuthToken, as_utc

CODE_TTL = timedelta(minutes=10)
REFRESH_TTL = timedelta(days=30)
REQUEST_TTL_S = 600  # a pending authorization request (sign-in + consent) lasts this long


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class AuxenCode(AuthorizationCode):
    family_id: str
    user_id: str
    workspace_id: str


class AuxenRefreshToken(RefreshToken):
    family_id: str
    user_id: str
    workspace_id: str


class AuxenAccessToken(AccessToken):
    family_id: str
    user_id: str
    workspace_id: str


class OAuthProvider:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.resource = resource_url(settings.base_url)
        self._requests = SealedTokens(settings.master_key_bytes, "oauth authorization requests")
        self.documents = DocumentFetcher(tenant_policy(settings))

    # -- clients ---------------------------------------------------------------------

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        """The client as authorization sees it: registered (or described by its metadata
        document) and unexpired, with only the redirect URIs today's rules allow, and
        free to ask for any scope Auxen supports (what it gets is what the person
        consents to; the scope it registered with is not a ceiling, or an agent that
        registered with the defaults could never step up to `billing`)."""
        if is_document_url(client_id):
            found = await self.documents.client(client_id)
        elif len(client_id) > 64:
            return None
        else:
            async with self.db.system() as session:
                row = await session.get(OAuthClient, client_id)
            if row is None or self._client_expired(row):
                return None
            found = OAuthClientInformationFull.model_validate_json(row.info_json)
        if found is None:
            return None
        return found.model_copy(
            update={
                "redirect_uris": [u for u in found.redirect_uris or [] if _allowed(str(u))],
                "scope": " ".join(SCOPES),
            }
        )

    def _expiry_cutoffs(self) -> tuple[datetime, datetime]:
        """Clients created before the first and never used, or last used before the
        second, have expired."""
        now = datetime.now(UTC)
        return (
            now - timedelta(seconds=self.settings.oauth_unused_client_ttl_s),
            now - timedelta(seconds=self.settings.oauth_idle_client_ttl_s),
        )

    def _client_expired(self, row: OAuthClient) -> bool:
        unused_cutoff, idle_cutoff = self._expiry_cutoffs()
        if row.last_used_at is None:
            return as_utc(row.created_at) < unused_cutoff
        return as_utc(row.last_used_at) < idle_cutoff

    async def delete_expired_clients(self) -> int:
        """Delete expired clients with whatever they still hold (codes, tokens, consents)."""
        unused_cutoff, idle_cutoff = self._expiry_cutoffs()
        expired = (
            sa.select(col(OAuthClient.id))
            .where(
                sa.or_(
                    sa.and_(
                        col(OAuthClient.last_used_at).is_(None),
                        col(OAuthClient.created_at) < unused_cutoff,
                    ),
                    col(OAuthClient.last_used_at) < idle_cutoff,
                )
            )
            .limit(1000)
        )
        async with self.db.engine.begin() as conn:
            ids = list((await conn.execute(expired)).scalars())
            if ids:
                for table in (OAuthToken, OAuthCode, OAuthConsent):
                    await conn.execute(sa.delete(table).where(col(table.client_id).in_(ids)))
                await conn.execute(sa.delete(OAuthClient).where(col(OAuthClient.id).in_(ids)))
        return len(ids)

    async def _touch_client(self, client_id: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                sa.update(OAuthClient)
                .where(col(OAuthClient.id) == client_id)
                .values(last_used_at=datetime.now(UTC))
            )

    async def secret_matches(self, client_id: str, secret: str) -> bool:
        async with self.db.system() as session:
            row = await session.get(OAuthClient, client_id)
        stored = row.secret_hash if row is not None else None
        return stored is not None and secrets.compare_digest(stored, digest(secret))

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        for uri in client_info.redirect_uris or []:
            try:
                check_redirect_uri(str(uri))
            except RedirectUriError as exc:
                raise RegistrationError("invalid_redirect_uri", str(exc)) from None
        await self.delete_expired_clients()  # registration is where the table grows
        secret = client_info.client_secret
        public = client_info.model_copy(update={"client_secret": None})
        assert client_info.client_id is not None
        async with self.db.system() as session:
            session.add(
                OAuthClient(
                    id=client_info.client_id,
                    secret_hash=digest(secret) if secret else None,
                    info_json=public.model_dump_json(exclude_none=True),
                )
            )
            await session.commit()

    # -- authorization requests (between /authorize and the consent page) ------------

    async def authorize(
        self, client: OAuthClientInformationFull, params: AuthorizationParams
    ) -> str:
        """Where the user goes to sign in and consent: the request travels sealed. A
        `resource` other than this server's MCP endpoint is refused (RFC 8707
        `invalid_target`): Auxen issues tokens for itself only, so a client cannot obtain,
        through a person's consent here, a token it means to spend elsewhere."""
        if params.resource is not None and not same_resource(params.resource, self.resource):
            raise AuthorizeError(
                "invalid_target",
                f"this server issues tokens for {self.resource} only, not {params.resource[:200]}",
            )
        scopes = list(dict.fromkeys(params.scopes or DEFAULT_SCOPES))
        pending = {
            "client_id": client.client_id,
            "state": params.state,
            "scopes": scopes,
            "code_challenge": params.code_challenge,
            "redirect_uri": str(params.redirect_uri),
            "redirect_uri_explicit": params.redirect_uri_provided_explicitly,
            "resource": self.resource,
        }
        token = self._requests.issue(pending, REQUEST_TTL_S)
        return f"{self.settings.base_url}/oauth/consent?{urlencode({'request': token})}"

    def open_request(self, token: str) -> dict[str, Any] | None:
        """The pending request behind a consent page, or None if forged or expired."""
        return self._requests.open(token)

    async def issue_code(self, pending: dict[str, object], user_id: str, workspace_id: str) -> str:
        code = secrets.token_urlsafe(32)
        scopes = pending["scopes"]
        assert isinstance(scopes, list)
        async with self.db.system() as session:
            session.add(
                OAuthCode(
                    code_hash=digest(code),
                    family_id=new_id("fam")[:32],
                    client_id=str(pending["client_id"]),
                    user_id=user_id,
                    workspace_id=workspace_id,
                    scopes=" ".join(str(s) for s in scopes),
                    redirect_uri=str(pending["redirect_uri"]),
                    redirect_uri_explicit=bool(pending["redirect_uri_explicit"]),
                    code_challenge=str(pending["code_challenge"]),
                    resource=str(pending.get("resource") or self.resource),
                    expires_at=datetime.now(UTC) + CODE_TTL,
                )
            )
            await session.commit()
        await self._touch_client(str(pending["client_id"]))
        return code

    # -- codes -----------------------------------------------------------------------

    async def code_row(self, code: str) -> OAuthCode | None:
        async with self.db.system() as session:
            return await session.get(OAuthCode, digest(code[:200]))

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> AuxenCode | None:
        row = await self.code_row(authorization_code)
        if row is None or row.client_id != client.client_id:
            return None
        if not same_resource(row.resource or self.resource, self.resource):
            return None  # issued by a server with another public URL on this database
        if row.used_at is not None:
            await self.revoke_family(row.family_id)  # a replayed code: assume it leaked
            return None
        return AuxenCode(
            code=authorization_code,
            scopes=row.scopes.split(),
            expires_at=as_utc(row.expires_at).timestamp(),
            client_id=row.client_id,
            code_challenge=row.code_challenge,
            redirect_uri=AnyUrl(row.redirect_uri),
            redirect_uri_provided_explicitly=row.redirect_uri_explicit,
            resource=row.resource,
            subject=row.user_id,
            family_id=row.family_id,
            user_id=row.user_id,
            workspace_id=row.workspace_id,
        )

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: AuxenCode
    ) -> TokenResponse:
        async with self.db.engine.begin() as conn:
            spent = await conn.execute(
                sa.update(OAuthCode)
                .where(col(OAuthCode.code_hash) == digest(authorization_code.code))
                .where(col(OAuthCode.used_at).is_(None))
                .values(used_at=datetime.now(UTC))
            )
        if spent.rowcount != 1:  # lost a race with another exchange of the same code
            await self.revoke_family(authorization_code.family_id)
            raise TokenError("invalid_grant", "authorization code already used")
        tokens = await self._issue(
            client_id=authorization_code.client_id,
            family_id=authorization_code.family_id,
            user_id=authorization_code.user_id,
            workspace_id=authorization_code.workspace_id,
            scopes=authorization_code.scopes,
            resource=authorization_code.resource or self.resource,
        )
        # Re-authorizing a client replaces the user's earlier grants to it.
        await self.revoke_grants(
            authorization_code.user_id,
            authorization_code.client_id,
            keep_family=authorization_code.family_id,
        )
        return tokens

    # -- tokens ----------------------------------------------------------------------

    async def _issue(
        self, *, client_id: str, family_id: str, user_id: str, workspace_id: str,
        scopes: list[str], resource: str,
    ) -> TokenResponse:  # fmt: skip
        """Access and refresh tokens for the grant, bound to the resource the person
        consented to (the code's, or the refresh token's)."""
        await self._touch_client(client_id)
        access_ttl = timedelta(seconds=self.settings.oauth_access_token_ttl_s)
        access = ACCESS_PREFIX + secrets.token_urlsafe(32)
        refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        common: dict[str, Any] = {
            "family_id": family_id,
            "client_id": client_id,
            "user_id": user_id,
            "workspace_id": workspace_id,
            "scopes": " ".join(scopes),
            "resource": resource,
            "created_at": now,
        }
        async with self.db.system() as session:
            session.add(
                OAuthToken(
                    token_hash=digest(access), kind="access", expires_at=now + access_ttl, **common
                )
            )
            session.add(
                OAuthToken(
                    token_hash=digest(refresh),
                    kind="refresh",
                    expires_at=now + REFRESH_TTL,
                    **common,
                )
            )
            await session.commit()
        return TokenResponse(
            access_token=access,
            token_type="Bearer",
            expires_in=int(access_ttl.total_seconds()),
            refresh_token=refresh,
            scope=" ".join(scopes),
        )

    async def refresh_row(self, token: str) -> OAuthToken | None:
        return await self._token_row(token, "refresh")

    async def _token_row(self, token: str, kind: str) -> OAuthToken | None:
        async with self.db.system() as session:
            row = await session.get(OAuthToken, digest(token[:200]))
        if row is None or row.kind != kind:
            return None
        return row

    async def load_access_token(self, token: str) -> AuxenAccessToken | None:
        if not token.startswith(ACCESS_PREFIX):
            return None
        row = await self._token_row(token, "access")
        if row is None or row.revoked_at is not None:
            return None
        if as_utc(row.expires_at) <= datetime.now(UTC):
            return None
        return AuxenAccessToken(
            token=f"family:{row.family_id}",  # never the token itself
            **_grant_fields(row),
        )

    async def load_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: str
    ) -> AuxenRefreshToken | None:
        if not refresh_token.startswith(REFRESH_PREFIX):
            return None
        row = await self._token_row(refresh_token, "refresh")
        if row is None or row.client_id != client.client_id or row.revoked_at is not None:
            return None
        if not same_resource(row.resource, self.resource):
            return None  # issued by a server with another public URL on this database
        if row.used_at is not None:
            await self.revoke_family(row.family_id)  # a rotated token came back: leaked
            return None
        return AuxenRefreshToken(token=refresh_token, **_grant_fields(row))

    async def exchange_refresh_token(
        self,
        client: OAuthClientInformationFull,
        refresh_token: AuxenRefreshToken,
        scopes: list[str],
    ) -> TokenResponse:
        async with self.db.engine.begin() as conn:
            spent = await conn.execute(
                sa.update(OAuthToken)
                .where(col(OAuthToken.token_hash) == digest(refresh_token.token))
                .where(col(OAuthToken.used_at).is_(None))
                .where(col(OAuthToken.revoked_at).is_(None))
                .values(used_at=datetime.now(UTC))
            )
        if spent.rowcount != 1:
            await self.revoke_family(refresh_token.family_id)
            raise TokenError("invalid_grant", "refresh token already used")
        return await self._issue(
            client_id=refresh_token.client_id,
            family_id=refresh_token.family_id,
            user_id=refresh_token.user_id,
            workspace_id=refresh_token.workspace_id,
            scopes=scopes,
            resource=refresh_token.resource or self.resource,
        )

    async def exchange_identity_assertion(
        self, client: OAuthClientInformationFull, params: IdentityAssertionParams
    ) -> TokenResponse:
        raise TokenError("unsupported_grant_type", "identity assertions are not accepted")

    async def revoke_token(self, token: AuxenAccessToken | AuxenRefreshToken) -> None:
        await self.revoke_family(token.family_id)

    async def revoke_grants(
        self, user_id: str, client_id: str, *, keep_family: str | None = None
    ) -> None:
        """Revoke every token `client_id` holds for `user_id` (but `keep_family`'s)."""
        revoke = (
            sa.update(OAuthToken)
            .where(col(OAuthToken.user_id) == user_id, col(OAuthToken.client_id) == client_id)
            .where(col(OAuthToken.revoked_at).is_(None))
        )
        if keep_family is not None:
            revoke = revoke.where(col(OAuthToken.family_id) != keep_family)
        async with self.db.engine.begin() as conn:
            await conn.execute(revoke.values(revoked_at=datetime.now(UTC)))

    async def revoke_family(self, family_id: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                sa.update(OAuthToken)
                .where(col(OAuthToken.family_id) == family_id)
                .where(col(OAuthToken.revoked_at).is_(None))
                .values(revoked_at=datetime.now(UTC))
            )


def _allowed(uri: str) -> bool:
    try:
        check_redirect_uri(uri)
    except RedirectUriError:
        return False
    return True


def _grant_fields(row: OAuthToken) -> dict[str, Any]:
    """What an access or a refresh token tells about its grant."""
    return {
        "client_id": row.client_id,
        "scopes": row.scopes.split(),
        "expires_at": int(as_utc(row.expires_at).timestamp()),
        "resource": row.resource,
        "subject": row.user_id,
        "family_id": row.family_id,
        "user_id": row.user_id,
        "workspace_id": row.workspace_id,
    }
