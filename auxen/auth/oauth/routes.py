"""The authorization server's HTTP surface: metadata (RFC 8414, RFC 9728), registration
(RFC 7591), authorize, token and revocation (RFC 7009).

The MCP SDK's handlers do the protocol work over `OAuthProvider`; this module closes the
gaps they leave: an issuer exactly equal to the public URL, `none` among the client
authentication methods, `iss` on every authorization response, client secrets checked
against a hash, HTTP Basic client authentication without `client_id` in the body (RFC
6749 section 2.3.1), the token request's `resource` checked against the grant's, token
requests admitted by the throttle (per address, and per client when it presents a
secret) before they are judged, registrations rate-limited per address, and every
registered field bounded (`client_metadata`).
"""

from __future__ import annotations

import base64
import binascii
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from mcp.server.auth.handlers.authorize import AuthorizationHandler
from mcp.server.auth.handlers.register import RegistrationHandler
from mcp.server.auth.handlers.token import TokenHandler
from mcp.server.auth.middleware.client_auth import AuthenticationError, ClientAuthenticator
from mcp.server.auth.settings import ClientRegistrationOptions
from mcp.shared.auth import OAuthClientInformationFull
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message

from auxen.auth import throttle
from auxen.auth.oauth import DEFAULT_SCOPES, SCOPES, resource_url, same_resource
from auxen.auth.oauth.client_metadata import (
    MAX_REQUEST_BYTES,
    ClientMetadataError,
    check_client_metadata,
    parse_registration,
)
from auxen.auth.oauth.provider import OAuthProvider
from auxen.auth.throttle import Throttle
from auxen.tools.errors import RateLimited

JSON_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def metadata(base_url: str) -> dict[str, Any]:
    """RFC 8414 Authorization Server Metadata; the issuer is the public URL, verbatim."""
    return {
        "issuer": base_url,
        "authorization_endpoint": f"{base_url}/authorize",
        "token_endpoint": f"{base_url}/token",
        "registration_endpoint": f"{base_url}/register",
        "revocation_endpoint": f"{base_url}/revoke",
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": [
            "none",
            "client_secret_post",
            "client_secret_basic",
        ],
        "revocation_endpoint_auth_methods_supported": [
            "none",
            "client_secret_post",
            "client_secret_basic",
        ],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        "client_id_metadata_document_supported": True,
    }


def protected_resource(base_url: str) -> dict[str, Any]:
    """RFC 9728 Protected Resource Metadata for /mcp."""
    return {
        "resource": resource_url(base_url),
        "authorization_servers": [base_url],
        "scopes_supported": list(SCOPES),
        "bearer_methods_supported": ["header"],
        "resource_name": "Auxen MCP",
    }


class HashedSecretAuthenticator(ClientAuthenticator):
    """The SDK's client authentication, but secrets are compared with their stored
    SHA-256 (the SDK compares against a stored plaintext secret)."""

    def __init__(self, provider: OAuthProvider) -> None:
        super().__init__(provider)
        self.auxen = provider

    async def authenticate_request(self, request: Request) -> OAuthClientInformationFull:
        form = await request.form()
        client_id = form.get("client_id")
        header = request.headers.get("Authorization", "")
        secret: str | None = None
        if header.startswith("Basic "):
            basic = basic_credentials(header)
            if basic is None:
                raise AuthenticationError("Invalid Basic authentication header")
            basic_id, secret = basic
            if client_id and basic_id != client_id:
                raise AuthenticationError("Client ID mismatch in Basic auth")
            client_id = basic_id
        elif isinstance(form.get("client_secret"), str):
            secret = str(form.get("client_secret"))
        if not isinstance(client_id, str) or not client_id:
            raise AuthenticationError("Missing client_id")
        client = await self.auxen.get_client(client_id)
        if client is None:
            raise AuthenticationError("Invalid client_id")
        method = client.token_endpoint_auth_method or "client_secret_basic"
        if method == "none":
            return client
        if method == "client_secret_basic" and not header.startswith("Basic "):
            raise AuthenticationError("this client authenticates with HTTP Basic")
        if not secret or not await self.auxen.secret_matches(client_id, secret):
            raise AuthenticationError("Invalid client_secret")
        return client


def basic_credentials(header: str) -> tuple[str, str] | None:
    """The client id and secret of an HTTP Basic `Authorization` header (RFC 6749 2.3.1)."""
    try:
        basic_id, secret = base64.b64decode(header.removeprefix("Basic ")).decode().split(":", 1)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return None
    # RFC 6749 2.3.1: both are form-urlencoded before they are joined and encoded.
    return unquote_plus(basic_id), unquote_plus(secret)


def too_many(exc: RateLimited) -> Response:
    return JSONResponse(
        {"error": "too_many_requests", "error_description": exc.message},
        status_code=429,
        headers={**JSON_NO_STORE, "Retry-After": str(exc.retry_after_s)},
    )


class AuthorizationServer:
    def __init__(self, provider: OAuthProvider, base_url: str) -> None:
        self.provider = provider
        self.base_url = base_url
        authenticator = HashedSecretAuthenticator(provider)
        self._authorize = AuthorizationHandler(provider)
        self._token = TokenHandler(provider, authenticator)
        self._register = RegistrationHandler(
            provider,
            options=ClientRegistrationOptions(
                enabled=True, valid_scopes=list(SCOPES), default_scopes=list(DEFAULT_SCOPES)
            ),
        )
        self._authenticator = authenticator
        self.throttle = Throttle(provider.db)
        self.registrations_per_hour = provider.settings.oauth_registrations_per_hour

    def routes(self) -> list[Route]:
        return [
            Route("/.well-known/oauth-authorization-server", self.server_metadata,
                  methods=["GET"]),
            Route("/.well-known/oauth-protected-resource/mcp", self.resource_metadata,
                  methods=["GET"]),
            Route("/.well-known/oauth-protected-resource", self.resource_metadata,
                  methods=["GET"]),
            Route("/authorize", self.authorize, methods=["GET", "POST"]),
            Route("/token", self.token, methods=["POST"]),
            Route("/register", self.register, methods=["POST"]),
            Route("/revoke", self.revoke, methods=["POST"]),
        ]  # fmt: skip

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(metadata(self.base_url))

    async def resource_metadata(self, request: Request) -> Response:
        return JSONResponse(protected_resource(self.base_url))

    async def authorize(self, request: Request) -> Response:
        """The SDK's authorize, with `iss` added to every redirect back to the client
        (RFC 9207), errors included. RFC 8707 lets a request name several resources;
        the SDK reads one, so when any of several is not this server's, it is the one
        the SDK is given (and refuses with `invalid_target`)."""
        params = request.query_params if request.method == "GET" else await request.form()
        named = [v for v in params.getlist("resource") if isinstance(v, str)]
        foreign = [v for v in named if not same_resource(v, self.provider.resource)]
        if len(named) > 1 and foreign:
            kept = [(k, v) for k, v in params.multi_items() if k != "resource"]
            query = urlencode(
                [(k, v) for k, v in kept if isinstance(v, str)] + [("resource", foreign[0])]
            )
            if request.method == "GET":
                request = Request(
                    {**request.scope, "query_string": query.encode()}, request.receive
                )
            else:
                request = _replayed(request, query, "application/x-www-form-urlencoded")
        response = await self._authorize.handle(request)
        location = response.headers.get("location")
        if location and not location.startswith(f"{self.base_url}/oauth/consent"):
            response.headers["location"] = with_iss(location, self.base_url)
        return response

    async def register(self, request: Request) -> Response:
        """The SDK's registration (RFC 7591), at most so many per client address an hour,
        once the request is read (16 KB at most) and every field is within its bounds."""
        try:
            await self.throttle.spend(
                f"register:address:{_address(request)}",
                limit=self.registrations_per_hour,
                window=timedelta(hours=1),
            )
        except RateLimited as exc:
            return too_many(exc)
        try:
            body = await _bounded_body(request, MAX_REQUEST_BYTES)
            check_client_metadata(parse_registration(body))
        except ClientMetadataError as exc:
            return JSONResponse(
                {"error": exc.error, "error_description": exc.message, "field": exc.field},
                status_code=400,
                headers=JSON_NO_STORE,
            )
        response: Response = await self._register.handle(_replayed(request, body))
        return response

    async def token(self, request: Request) -> Response:
        """The SDK's token endpoint, after the throttle and after checking `resource`
        against the grant's. Every request is admitted by the throttle before it is
        judged, and counts against the address unless it succeeds, so guessing codes,
        verifiers or refresh tokens soon has to wait, however many run at once. A
        request that presents a client secret also counts against that client unless
        it authenticates (guessing a secret). Refused grants do not count against the
        client, and requests without a secret never do: client ids are not secret (a
        metadata document's is a public URL), and anyone could lock a client out."""
        form = await request.form()
        by_address = {f"token:address:{_address(request)}": throttle.ADDRESS}
        claimed = form.get("client_id")
        basic = basic_credentials(request.headers.get("Authorization", ""))
        if basic is not None:
            claimed = basic[0]
        presents_secret = basic is not None or isinstance(form.get("client_secret"), str)
        by_client = (
            {f"token:client:{claimed[:300]}": throttle.CLIENT}
            if presents_secret and isinstance(claimed, str) and claimed
            else {}
        )
        try:
            attempt = await self.throttle.admit(by_address | by_client)
        except RateLimited as exc:
            return too_many(exc)
        if basic is not None and not form.get("client_id"):
            # RFC 6749 2.3.1: a client authenticating with HTTP Basic need not repeat its
            # id in the body; the SDK's request models want it there.
            body = urlencode(
                [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
                + [("client_id", basic[0])]
            )
            request = _replayed(request, body, "application/x-www-form-urlencoded")
        response = await self._token_after_checks(request)
        if response.status_code == 401:  # a failed client authentication: both pay
            await attempt.failed()
        elif response.status_code == 400:  # a refused grant: the address pays
            await attempt.refund(by_client)
            await attempt.failed(by_address)
        else:
            await attempt.succeeded()
        response.headers.update(JSON_NO_STORE)
        return response

    async def _token_after_checks(self, request: Request) -> Response:
        form = await request.form()
        named = [v for v in form.getlist("resource") if isinstance(v, str) and v]
        if named:
            bound: str | None = None
            if form.get("grant_type") == "authorization_code":
                row = await self.provider.code_row(str(form.get("code") or ""))
                bound = (row.resource or self.provider.resource) if row else None
            elif form.get("grant_type") == "refresh_token":
                # RFC 8707 section 2.2: a refresh may only name the resource the grant is for.
                refresh = await self.provider.refresh_row(str(form.get("refresh_token") or ""))
                bound = refresh.resource if refresh else None
            wrong = [v for v in named if bound is not None and not same_resource(v, bound)]
            if wrong:
                return JSONResponse(
                    {
                        "error": "invalid_target",
                        "error_description": f"this grant is for {bound}, not {wrong[0][:200]}",
                    },
                    status_code=400,
                )
        response: Response = await self._token.handle(request)
        return response

    async def revoke(self, request: Request) -> Response:
        """RFC 7009 for public clients too (the SDK's handler insists on a secret): the
        client authenticates as registered, and its token's whole family is revoked.
        Unknown tokens get 200 as well, so the answer tells nothing."""
        try:
            client = await self._authenticator.authenticate_request(request)
        except AuthenticationError as exc:
            return JSONResponse(
                {"error": "invalid_client", "error_description": exc.message},
                status_code=401,
                headers=JSON_NO_STORE,
            )
        token = (await request.form()).get("token")
        if not isinstance(token, str) or not token:
            return JSONResponse(
                {"error": "invalid_request", "error_description": "token is required"},
                status_code=400,
                headers=JSON_NO_STORE,
            )
        grant = await self.provider.load_access_token(token) or (
            await self.provider.load_refresh_token(client, token)
        )
        if grant is not None and grant.client_id == client.client_id:
            await self.provider.revoke_family(grant.family_id)
        return Response(status_code=200, headers=JSON_NO_STORE)


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The request's body, read no further than `limit` bytes past which it is refused."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ClientMetadataError(
                "request", f"client metadata is at most {limit} bytes of JSON"
            )
    return bytes(body)


def _replayed(request: Request, body: bytes | str, content_type: str | None = None) -> Request:
    """A copy of `request` whose body is `body` (already read from the original)."""
    raw = body.encode() if isinstance(body, str) else body
    replaced = {b"content-length": str(len(raw)).encode()}
    if content_type is not None:
        replaced[b"content-type"] = content_type.encode()
    headers = [(k, v) for k, v in request.scope["headers"] if k.lower() not in replaced]
    scope = {**request.scope, "headers": [*headers, *replaced.items()]}
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return Request(scope, receive)


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def with_iss(location: str, issuer: str) -> str:
    parts = urlsplit(location)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "iss"]
    query.append(("iss", issuer))
    return urlunsplit(parts._replace(query=urlencode(query)))
