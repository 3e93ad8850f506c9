"""The whole HTTP surface of Auxen on one screen: every route and every middleware."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from auxen import __version__
from auxen.auth.oauth.client_metadata import MAX_REQUEST_BYTES
from auxen.auth.oauth.provider import OAuthProvider
from auxen.auth.oauth.routes import AuthorizationServer
from auxen.body_limits import BodyLimits
from auxen.config import Settings
from auxen.header_values import TrimHeaderValues
from auxen.inference.fair_endpoint import FairEndpoint
from auxen.inference.proxy import InferenceProxy
from auxen.mcp_server.http import McpEndpoint
from auxen.rest.billing import WEBHOOK_MAX_BYTES, BillingApi
from auxen.rest.conversations import ConversationsApi
from auxen.rest.credentials import CredentialsApi
from auxen.rest.errors import auxen_error, http_error, unexpected_error
from auxen.rest.handlers import RestApi
from auxen.rest.knowledge import FORM_OVERHEAD_BYTES, KnowledgeApi
from auxen.rest.members import MembersApi
from auxen.rest.notifications import NotificationsApi
from auxen.runtime import Runtime
from auxen.tools.errors import AuxenError
from auxen.web.account import AccountPages
from auxen.web.consent import Consent
from auxen.web.dashboard import Dashboard
from auxen.web.members import MemberPages
from auxen.web.pages import STATIC_DIR, Pages
from auxen.web.security import SecurityHeaders, SecuritySurface
from auxen.web.status import StatusPage

# Forms (sign-in, consent, OAuth token and revocation, dashboard actions) are small.
FORM_MAX_BYTES = 32 * 1024


def create_app(settings: Settings | None = None, *, background: bool = True) -> Starlette:
    rt = Runtime.build(settings or Settings())
    proxy = InferenceProxy(rt)
    oauth = OAuthProvider(rt.db, rt.settings)
    mcp = McpEndpoint(rt, oauth)
    pages = Pages(rt)
    consent = Consent(pages, oauth)
    account = AccountPages(pages, consent.consents)
    dashboard = Dashboard(pages, consent.consents)
    authorization = AuthorizationServer(oauth, rt.settings.base_url)
    rest = RestApi(rt)
    money = BillingApi(rt)
    kb = KnowledgeApi(rt)
    creds = CredentialsApi(rt)
    people = MembersApi(rt)
    member_pages = MemberPages(pages)
    surface = SecuritySurface(pages)
    status = StatusPage(pages)
    history = ConversationsApi(rt)
    notices = NotificationsApi(rt)

    async def health(request: Request) -> Response:
        await rt.db.ping()
        return JSONResponse({"status": "ok", "version": __version__})

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/instances", rest.provision, methods=["POST"]),
        Route("/v1/instances", rest.list_instances, methods=["GET"]),
        Route("/v1/instances/{id}", rest.get_instance, methods=["GET"]),
        Route("/v1/instances/{id}", rest.destroy_instance, methods=["DELETE"]),
        Route("/v1/instances/{id}/keys", rest.create_instance_key, methods=["POST"]),
        # OpenAI-compatible inference, one base URL per instance.
        # (each admitted by the fair-use limits for as long as its answer streams)
        Route(
            "/v1/instances/{instance_id}/chat/completions",
            FairEndpoint(rt, proxy.chat_completions),
            methods=["POST"],
        ),
        Route(
            "/v1/instances/{instance_id}/completions",
            FairEndpoint(rt, proxy.completions),
            methods=["POST"],
        ),
        Route("/v1/instances/{instance_id}/models", proxy.models, methods=["GET"]),
        Route("/v1/keys", rest.create_key, methods=["POST"]),
        Route("/v1/keys", rest.list_keys, methods=["GET"]),
        Route("/v1/keys/{id}", rest.revoke_key, methods=["DELETE"]),
        Route("/v1/usage", rest.usage, methods=["GET"]),
        # Money: balance and caps, buying credits, and Stripe's signed webhook (no key).
        Route("/v1/balance", money.balance, methods=["GET"]),
        Route("/v1/caps", money.set_cap, methods=["POST"]),
        Route("/v1/alerts/webhook", money.alert_webhook, methods=["PUT"]),
        Route("/v1/credits/checkout", money.checkout, methods=["POST"]),
        Route("/v1/stripe/webhook", money.stripe_webhook, methods=["POST"]),
        # The workspace's own provider credentials (BYOK): write-only secrets.
        Route("/v1/credentials", creds.list_all, methods=["GET"]),
        Route("/v1/credentials/{provider}", creds.put, methods=["PUT"]),
        Route("/v1/credentials/{provider}", creds.delete, methods=["DELETE"]),
        # Knowledge bases, their documents, and the instances that retrieve from them.
        Route("/v1/knowledge-bases", kb.create, methods=["POST"]),
        Route("/v1/knowledge-bases", kb.list_all, methods=["GET"]),
        Route("/v1/knowledge-bases/{kb_id}", kb.get, methods=["GET"]),
        Route("/v1/knowledge-bases/{kb_id}", kb.delete, methods=["DELETE"]),
        Route("/v1/knowledge-bases/{kb_id}/documents", kb.add_documents, methods=["POST"]),
        Route("/v1/knowledge-bases/{kb_id}/documents", kb.list_documents, methods=["GET"]),
        Route(
            "/v1/knowledge-bases/{kb_id}/documents/{doc_id}", kb.delete_document, methods=["DELETE"]
        ),
        Route("/v1/knowledge-bases/{kb_id}/search", kb.search, methods=["POST"]),
        Route("/v1/instances/{id}/knowledge-bases", kb.attach, methods=["POST"]),
        Route("/v1/instances/{id}/knowledge-bases", kb.attachments, methods=["GET"]),
        Route("/v1/instances/{id}/knowledge-bases/{kb_id}", kb.detach, methods=["DELETE"]),
        # People, the workspace itself, and its audit log.
        Route("/v1/members", people.list_members, methods=["GET"]),
        Route("/v1/members", people.invite, methods=["POST"]),
        Route("/v1/members/{user_id}", people.change_role, methods=["PATCH"]),
        Route("/v1/members/{user_id}", people.remove, methods=["DELETE"]),
        Route("/v1/invites", people.invite, methods=["POST"]),
        Route("/v1/invites", people.list_invites, methods=["GET"]),
        Route("/v1/invites/{id}", people.revoke_invite, methods=["DELETE"]),
        Route("/v1/workspace/transfer", people.transfer, methods=["POST"]),
        Route("/v1/workspace", people.delete_workspace, methods=["DELETE"]),
        Route("/v1/audit", people.audit_log, methods=["GET"]),
        # Conversation history (instances provisioned with history: true).
        Route("/v1/instances/{id}/query", history.query, methods=["POST"]),
        Route("/v1/instances/{id}/conversations", history.list_for_instance, methods=["GET"]),
        Route("/v1/conversations/{id}", history.get, methods=["GET"]),
        Route("/v1/conversations/{id}", history.delete, methods=["DELETE"]),
        # Notifications: where events go, webhook endpoints, the delivery log.
        Route("/v1/notifications/preferences", notices.preferences, methods=["GET"]),
        Route("/v1/notifications/preferences", notices.set_preferences, methods=["PUT"]),
        Route("/v1/notifications/webhooks", notices.webhooks, methods=["GET"]),
        Route("/v1/notifications/webhooks", notices.create_webhook, methods=["POST"]),
        Route("/v1/notifications/webhooks/{id}", notices.delete_webhook, methods=["DELETE"]),
        Route("/v1/notifications/deliveries", notices.deliveries, methods=["GET"]),
        # MCP over Streamable HTTP (GET, POST, DELETE), for agents.
        Route("/mcp", mcp),
        # Pages for people.
        Route("/signup", pages.signup_form, methods=["GET"]),
        Route("/signup", pages.signup, methods=["POST"]),
        Route("/signup/sent", pages.signup_sent, methods=["GET"]),
        Route("/signup/confirm", pages.confirm_form, methods=["GET"]),
        Route("/signup/confirm", pages.confirm, methods=["POST"]),
        Route("/login", pages.login_form, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/login/mfa", pages.mfa_form, methods=["GET"]),
        Route("/login/mfa", pages.mfa, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/account", account.show, methods=["GET"]),
        Route("/account/confirm-email", account.send_confirmation, methods=["POST"]),
        Route("/account/password", account.change_password, methods=["POST"]),
        Route("/account/mfa/setup", account.mfa_setup, methods=["POST"]),
        Route("/account/mfa/enable", account.mfa_enable, methods=["POST"]),
        Route("/account/mfa/recovery-codes", account.recovery_codes, methods=["POST"]),
        Route("/account/mfa/disable", account.mfa_disable, methods=["POST"]),
        Route("/account/apps/revoke", account.revoke_app, methods=["POST"]),
        Route("/account/workspace", account.choose_workspace, methods=["POST"]),
        Route("/members", member_pages.show, methods=["GET"]),
        Route("/members/invite", member_pages.invite, methods=["POST"]),
        Route("/members/invites/revoke", member_pages.revoke_invite, methods=["POST"]),
        Route("/members/role", member_pages.change_role, methods=["POST"]),
        Route("/members/remove", member_pages.remove, methods=["POST"]),
        Route("/invite/{token}", member_pages.invitation, methods=["GET"]),
        Route("/invite/{token}", member_pages.accept, methods=["POST"]),
        Route("/audit", member_pages.audit_log, methods=["GET"]),
        # The public security surface: disclosure policy, security.txt, status.
        Route("/.well-known/security.txt", surface.security_txt, methods=["GET"]),
        Route("/security", surface.policy, methods=["GET"]),
        Route("/status", status.page, methods=["GET"]),
        Route("/status.json", status.json, methods=["GET"]),
        # The dashboard (security and connected agents are the account page above).
        Route("/dashboard", dashboard.overview, methods=["GET"]),
        Route("/dashboard/mode", dashboard.switch_mode, methods=["POST"]),
        Route("/instances", dashboard.instances, methods=["GET"]),
        Route("/instances/states.json", dashboard.instance_states, methods=["GET"]),
        Route("/instances/{id}/destroy", dashboard.confirm_destroy, methods=["GET"]),
        Route("/instances/{id}/destroy", dashboard.destroy, methods=["POST"]),
        Route("/keys", dashboard.keys, methods=["GET"]),
        Route("/keys", dashboard.create_key, methods=["POST"]),
        Route("/keys/revoke", dashboard.revoke_key, methods=["POST"]),
        Route("/knowledge-bases", dashboard.knowledge_bases, methods=["GET"]),
        Route("/knowledge-bases/{kb_id}", dashboard.knowledge_base, methods=["GET"]),
        Route("/usage", dashboard.usage, methods=["GET"]),
        Route("/usage.csv", dashboard.usage_csv, methods=["GET"]),
        Route("/billing", dashboard.billing, methods=["GET"]),
        Route("/billing/checkout", dashboard.checkout, methods=["POST"]),
        Route("/billing/caps", dashboard.set_cap, methods=["POST"]),
        # OAuth 2.1 for remote agents: metadata, registration, authorize, consent, token.
        *authorization.routes(),
        Route("/oauth/consent", consent.show, methods=["GET"]),
        Route("/oauth/consent", consent.decide, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await rt.start(background=background)
        try:
            async with mcp.running():
                yield
        finally:
            await rt.close()

    # The most a body may be on each route prefix, enforced while it arrives; the first
    # match wins and anything else (pages, OAuth forms) gets FORM_MAX_BYTES.
    settings = rt.settings
    kb_upload = settings.kb_max_document_bytes * 4 // 3 + FORM_OVERHEAD_BYTES
    body_limits = [
        ("/v1/stripe/webhook", WEBHOOK_MAX_BYTES),
        ("/v1/knowledge-bases", kb_upload),
        ("/v1", settings.max_body_bytes),
        ("/mcp", settings.max_body_bytes + 65_536),
        ("/register", MAX_REQUEST_BYTES),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            # Security headers on every response: pages, REST, MCP and static files.
            Middleware(SecurityHeaders, settings=settings),
            # Header values without surrounding whitespace (RFC 9110 section 5.5).
            Middleware(TrimHeaderValues),
            Middleware(BodyLimits, limits=body_limits, default=FORM_MAX_BYTES),
        ],
        exception_handlers={
            AuxenError: auxen_error,
            HTTPException: http_error,
            Exception: unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.runtime = rt
    app.state.proxy = proxy
    return app
