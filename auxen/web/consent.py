"""The consent page between /authorize and the client's redirect URI: the signed-in user
sees which client asks, the exact host it will be sent back to, the resource its token
will be for, which workspace and which scopes, and allows or denies. Both answers go
back to the client with `state` and `iss`. A request a remembered consent covers exactly
(see auth.oauth.consents) goes straight back with a code. A person who has not confirmed
their email address yet (where that is required) cannot allow an agent in."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from auxen.auth.oauth import SCOPE_DESCRIPTIONS
from auxen.auth.oauth.consents import Consents
from auxen.auth.oauth.provider import OAuthProvider
from auxen.auth.oauth.redirect_uris import display_host
from auxen.auth.oauth.routes import with_iss
from auxen.notify import Event, EventType, notify
from auxen.tools import accounts, audit
from auxen.web.pages import (
    SECURITY_HEADERS,
    CsrfError,
    Pages,
    client_address,
    content_security_policy,
)


class Consent:
    def __init__(self, pages: Pages, provider: OAuthProvider) -> None:
        self.pages = pages
        self.provider = provider
        self.consents = Consents(provider)

    def _expired(self, request: Request) -> Response:
        return self.pages.render(
            request,
            "error.html",
            status=400,
            error="This sign-in request expired or is not valid. Start again from your app.",
            back="/account",
        )

    async def show(self, request: Request) -> Response:
        token = request.query_params.get("request", "")
        pending = self.provider.open_request(token)
        if pending is None:
            return self._expired(request)
        user = await self.pages.current_user(request)
        if user is None:
            here = f"/oauth/consent?{urlencode({'request': token})}"
            return RedirectResponse(f"/login?next={quote(here, safe='')}", status_code=303)
        client = await self.provider.get_client(str(pending["client_id"]))
        if client is None:
            return self._expired(request)
        scopes = [str(s) for s in pending["scopes"]]
        unproven = accounts.needs_email_proof(self.pages.rt, user)
        resource, redirect_uri = _resource(pending, self.provider), str(pending["redirect_uri"])
        remembered = await self.consents.remembered(
            user.id, str(client.client_id), resource, redirect_uri, scopes
        )
        if remembered is not None and not unproven:
            code = await self.provider.issue_code(pending, user.id, remembered.workspace_id)
            return self._back_to_client(pending, {"code": code})
        page = self.pages.render(
            request,
            "consent.html",
            user=user,
            client_name=client.client_name or client.client_id,
            redirect_host=display_host(redirect_uri),
            resource=resource,
            scopes=[(s, SCOPE_DESCRIPTIONS.get(s, s)) for s in scopes],
            workspaces=await accounts.workspaces_of(self.pages.rt, user),
            request_token=token,
            email_unproven=unproven,
        )
        # Browsers apply form-action to the redirect that answers the form, and that
        # redirect goes to the client: allow its origin (and only it) on this page.
        page.headers["Content-Security-Policy"] = content_security_policy(
            f"'self' {urlsplit(redirect_uri).scheme}://{display_host(redirect_uri)}"
        )
        return page

    async def decide(self, request: Request) -> Response:
        try:
            form = await self.pages._check_csrf(request)
        except CsrfError:
            return self.pages._forbidden(request)
        pending = self.provider.open_request(form.get("request", ""))
        if pending is None:
            return self._expired(request)
        user = await self.pages.current_user(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        answer: dict[str, str] = {}
        if form.get("decision") == "approve":
            if accounts.needs_email_proof(self.pages.rt, user):
                return self.pages.render(
                    request, "error.html", status=403, back="/account",
                    error="Confirm your email address before you connect an agent: follow "
                    "the link we sent you, or send a new one from your account page.",
                )  # fmt: skip
            allowed = {w.id for w, _ in await accounts.workspaces_of(self.pages.rt, user)}
            workspace_id = form.get("workspace_id", "")
            client = await self.provider.get_client(str(pending["client_id"]))
            if workspace_id not in allowed or client is None:
                return self._expired(request)
            await self.consents.remember(
                user.id,
                str(client.client_id),
                client.client_name or "",
                workspace_id,
                [str(s) for s in pending["scopes"]],
                resource=_resource(pending, self.provider),
                redirect_uri=str(pending["redirect_uri"]),
            )
            answer["code"] = await self.provider.issue_code(pending, user.id, workspace_id)
            await audit.record(
                self.pages.rt.db, workspace_id,
                audit.Actor.person(user.id, user.email, client_address(request)),
                "oauth.consent", target_type="oauth_client", target_id=str(client.client_id),
                detail={"scopes": len(pending["scopes"])},
            )  # fmt: skip
            await notify(
                self.pages.rt.db,
                workspace_id,
                Event(
                    EventType.OAUTH_CLIENT_AUTHORIZED,
                    {
                        "client_id": str(client.client_id)[:300],
                        "client_name": (client.client_name or str(client.client_id))[:200],
                        "scopes": " ".join(str(s) for s in pending["scopes"])[:300],
                        "user_id": user.id,
                    },
                    user_id=user.id,
                ),
            )
        else:
            answer["error"] = "access_denied"
            answer["error_description"] = "the user denied access"
        return self._back_to_client(pending, answer)

    def _back_to_client(self, pending: dict[str, Any], answer: dict[str, str]) -> Response:
        """Redirect to the client's redirect URI with `answer`, `state` and `iss`."""
        if pending.get("state") is not None:
            answer["state"] = str(pending["state"])
        redirect_uri = str(pending["redirect_uri"])
        joiner = "&" if urlsplit(redirect_uri).query else "?"
        location = with_iss(
            redirect_uri + joiner + urlencode(answer), self.provider.settings.base_url
        )
        response = RedirectResponse(location, status_code=303)
        response.headers.update(SECURITY_HEADERS)
        return response


def _resource(pending: dict[str, Any], provider: OAuthProvider) -> str:
    """The resource the request's token will be for (always this server's MCP endpoint:
    /authorize refuses any other)."""
    return str(pending.get("resource") or provider.resource)
