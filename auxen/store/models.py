"""The relational model. See docs/storage.md for what each table may never contain.

No table holds prompts, completions or retrieved text. Secrets are stored only as hashes
(API keys) or sealed ciphertext (the upstream vLLM key of an instance).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from auxen.store.ids import new_id


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(ts: datetime) -> datetime:
    """SQLite returns naive datetimes even for timezone-aware columns; they are UTC."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


class EnumText(sa.types.TypeDecorator[enum.StrEnum]):
    """A string enum stored as its plain value (VARCHAR), read back as the enum."""

    impl = sa.String(16)
    cache_ok = True

    def __init__(self, enum_cls: type[enum.StrEnum]) -> None:
        super().__init__()
        self.enum_cls = enum_cls

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        return None if value is None else self.enum_cls(value).value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> enum.StrEnum | None:
        return None if value is None else self.enum_cls(value)


def _ts(nullable: bool = True, index: bool = False) -> sa.Column[datetime]:
    return sa.Column(sa.DateTime(timezone=True), nullable=nullable, index=index)


class Role(enum.StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class KeyKind(enum.StrEnum):
    ACCOUNT = "account"
    INSTANCE = "instance"


class InstanceState(enum.StrEnum):
    PENDING = "pending"
    PROVISIONING = "provisioning"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    DESTROYED = "destroyed"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (InstanceState.DESTROYED, InstanceState.FAILED)


class TenantScoped:
    """Marker for tables whose rows belong to one workspace.

    Sessions opened for a workspace filter every query on these tables by
    `workspace_id` automatically (see `auxen.store.db`).
    """

    workspace_id: str


class Workspace(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("ws"), primary_key=True, max_length=32)
    name: str = Field(max_length=200)
    # The workspace's Stripe customers (live and test mode), made at its first purchase.
    stripe_customer_id: str | None = Field(default=None, max_length=255)
    stripe_test_customer_id: str | None = Field(default=None, max_length=255)
    # Where alerts are POSTed (set by an owner), and the secret that signs them, sealed.
    alert_webhook_url: str | None = Field(default=None, max_length=2000)
    alert_webhook_sealed: bytes | None = Field(default=None, sa_column=sa.Column(sa.LargeBinary))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    # Deleted: only its ledger, reservations and audit log remain, until the retention
    # period (`AUXEN_DELETED_WORKSPACE_RETENTION_DAYS`) has passed.
    deleted_at: datetime | None = Field(default=None, sa_column=_ts())


class User(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("usr"), primary_key=True, max_length=32)
    email: str = Field(max_length=320, unique=True, index=True)
    # argon2id PHC string; None for users made by `auxen init`, who cannot sign in yet.
    password_hash: str | None = Field(default=None, max_length=255)
    # TOTP second factor: the secret sealed under a key derived for this user; the last
    # time step accepted, so a code is never accepted twice.
    totp_secret_sealed: bytes | None = Field(default=None, sa_column=sa.Column(sa.LargeBinary))
    totp_enabled_at: datetime | None = Field(default=None, sa_column=_ts())
    totp_last_step: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger))
    # When the person proved they read mail at `email` (a link we sent); None until then.
    # Accounts made before the rule, and by operators (`auxen init`), count as proven.
    email_verified_at: datetime | None = Field(default=None, sa_column=_ts())
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))

    @property
    def has_totp(self) -> bool:
        return self.totp_secret_sealed is not None


class RecoveryCode(SQLModel, table=True):
    """A single-use second-factor recovery code (79 random bits), stored only as SHA-256."""

    __tablename__ = "recovery_code"

    code_hash: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), primary_key=True))
    user_id: str = Field(foreign_key="user.id", index=True, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    used_at: datetime | None = Field(default=None, sa_column=_ts())


class WebSession(SQLModel, table=True):
    """A signed-in browser. The cookie holds the token; only its SHA-256 is stored."""

    __tablename__ = "web_session"

    token_hash: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), primary_key=True))
    user_id: str = Field(foreign_key="user.id", index=True, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    last_seen_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    expires_at: datetime = Field(sa_column=_ts(nullable=False, index=True))


class AuthThrottle(SQLModel, table=True):
    """Failed attempts per subject ("login:account:<email>", "mfa:user:<id>",
    "token:client:<id>", ...) or, for rate limits, attempts in the current window
    ("register:address:<addr>"), in the database so every server process counts the same."""

    __tablename__ = "auth_throttle"

    key: str = Field(primary_key=True, max_length=400)
    failures: int = 0
    last_failure_at: datetime = Field(sa_column=_ts(nullable=False))
    locked_until: datetime | None = Field(default=None, sa_column=_ts())


class Membership(TenantScoped, SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("workspace_id", "user_id"),)

    id: str = Field(default_factory=lambda: new_id("mem"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    user_id: str = Field(foreign_key="user.id", index=True, max_length=32)
    role: Role = Field(sa_column=sa.Column(EnumText(Role), nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class ApiKey(TenantScoped, SQLModel, table=True):
    """A bearer key. `id` is the public key id embedded in the key itself, so lookup is
    a primary-key read; only the SHA-256 of the whole key is stored."""

    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    kind: KeyKind = Field(sa_column=sa.Column(EnumText(KeyKind), nullable=False))
    livemode: bool
    instance_id: str | None = Field(default=None, index=True, max_length=32)
    name: str = Field(default="", max_length=200)
    display_prefix: str = Field(max_length=64)
    secret_hash: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))
    # What an account key may do (see tools.permissions); instance keys only infer.
    role: Role = Field(default=Role.MEMBER, sa_column=sa.Column(EnumText(Role), nullable=False))
    # The person it was made by (and acts for: an account key never does more than its
    # creator's current role allows, and stops when they leave), and how it was made:
    # person (the dashboard), api_key (by another key of that person), agent (OAuth),
    # init (`auxen init`, for the owner it makes), operator, migration (backfilled).
    created_by_user_id: str | None = Field(default=None, index=True, max_length=32)
    created_via: str = Field(default="api_key", max_length=16)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    last_used_at: datetime | None = Field(default=None, sa_column=_ts())
    revoked_at: datetime | None = Field(default=None, sa_column=_ts())
    # Set when the key stopped working without being revoked, and why
    # ("creator_removed": its creator left the workspace).
    disabled_at: datetime | None = Field(default=None, sa_column=_ts())
    disabled_reason: str | None = Field(default=None, max_length=64)


class Instance(TenantScoped, SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("workspace_id", "idempotency_key"),)

    id: str = Field(default_factory=lambda: new_id("inst"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    livemode: bool
    model: str = Field(max_length=500)
    gpu_type: str = Field(max_length=64)
    tier: str = Field(max_length=32)
    provider: str = Field(max_length=32)
    provider_id: str | None = Field(default=None, max_length=200)
    state: InstanceState = Field(
        sa_column=sa.Column(EnumText(InstanceState), nullable=False, index=True)
    )
    upstream_url: str | None = Field(default=None, max_length=500)
    upstream_key_sealed: bytes | None = Field(default=None, sa_column=sa.Column(sa.LargeBinary))
    hourly_price_micros: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    ttl_seconds: int
    expires_at: datetime = Field(sa_column=_ts(nullable=False, index=True))
    idempotency_key: str | None = Field(default=None, max_length=200)
    # GPU types to try after `gpu_type` when the provider has no capacity (comma-separated).
    gpu_fallbacks: str | None = Field(default=None, max_length=200)
    # Where a bring-up stands ("RunPod pod x: STARTING (pulling the image)"), for progress.
    status_detail: str | None = Field(default=None, max_length=300)
    # The process bringing the instance up holds this lease and renews it while it works;
    # another process takes over only after it lapses (see lifecycle.InstanceManager).
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = Field(default=None, sa_column=_ts())
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    destroy_reason: str | None = Field(default=None, max_length=64)
    # Destroyed after this long without a query (None: never for idleness).
    idle_timeout_s: int | None = None
    last_query_at: datetime | None = Field(default=None, sa_column=_ts())
    # The OAuth client that provisioned it, so an agent's budget covers its GPU time.
    client_id: str | None = Field(default=None, max_length=2000)
    # Opt-in conversation history (sealed turns, deleted with the instance); off: nothing kept.
    history: bool = Field(
        default=False, sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false())
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    ready_at: datetime | None = Field(default=None, sa_column=_ts())
    stopped_at: datetime | None = Field(default=None, sa_column=_ts())
    destroyed_at: datetime | None = Field(default=None, sa_column=_ts())


class UsageRecord(TenantScoped, SQLModel, table=True):
    """One proxied inference call: counts and timings only, never content."""

    __tablename__ = "usage_record"
    # The dashboard's sums per day and per instance read a window of this from the index.
    __table_args__ = (
        sa.Index(
            "ix_usage_record_workspace_time",
            "workspace_id", "created_at", "instance_id", "prompt_tokens", "completion_tokens",
        ),
    )  # fmt: skip

    id: str = Field(default_factory=lambda: new_id("use"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    instance_id: str = Field(index=True, max_length=32)
    api_key_id: str | None = Field(default=None, max_length=32)
    endpoint: str = Field(max_length=64)
    model: str = Field(max_length=500)
    stream: bool
    status_code: int
    # ok | error | client_closed | upstream_error | ...; "streaming" while a stream is in
    # flight (checkpointed with `updated_at`), "interrupted" when its process died.
    outcome: str = Field(max_length=32, index=True)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float
    ttft_ms: float | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False, index=True))
    updated_at: datetime | None = Field(default=None, sa_column=_ts())
    # The per-token hold this call is charged against (a crash-cut stream is charged
    # what its last checkpoint recorded).
    reservation_id: str | None = Field(default=None, index=True, max_length=32)


class OAuthClient(SQLModel, table=True):
    """A client registered through Dynamic Client Registration. Its secret, when it has
    one, is stored only as SHA-256."""

    __tablename__ = "oauth_client"

    id: str = Field(primary_key=True, max_length=64)
    secret_hash: bytes | None = Field(default=None, sa_column=sa.Column(sa.LargeBinary(32)))
    info_json: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    last_used_at: datetime | None = Field(default=None, sa_column=_ts())


class OAuthCode(SQLModel, table=True):
    """An authorization code (stored as SHA-256): single use, short-lived, bound to its
    client, redirect URI, PKCE challenge and resource."""

    __tablename__ = "oauth_code"

    code_hash: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), primary_key=True))
    family_id: str = Field(max_length=32, index=True)
    client_id: str = Field(max_length=2000, index=True)  # a DCR id, or a document URL
    user_id: str = Field(foreign_key="user.id", max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", max_length=32)
    scopes: str = Field(max_length=500)
    redirect_uri: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    redirect_uri_explicit: bool
    code_challenge: str = Field(max_length=200)
    resource: str | None = Field(default=None, max_length=500)
    expires_at: datetime = Field(sa_column=_ts(nullable=False))
    used_at: datetime | None = Field(default=None, sa_column=_ts())


class OAuthToken(TenantScoped, SQLModel, table=True):
    """An access or refresh token (stored as SHA-256). Tokens issued from one code share a
    family: reusing a spent code or refresh token revokes the whole family."""

    __tablename__ = "oauth_token"

    token_hash: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), primary_key=True))
    kind: str = Field(max_length=16)  # access | refresh
    family_id: str = Field(max_length=32, index=True)
    client_id: str = Field(max_length=2000, index=True)  # a DCR id, or a document URL
    user_id: str = Field(foreign_key="user.id", index=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    scopes: str = Field(max_length=500)
    resource: str = Field(max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    expires_at: datetime = Field(sa_column=_ts(nullable=False))
    used_at: datetime | None = Field(default=None, sa_column=_ts())  # refresh: rotated
    revoked_at: datetime | None = Field(default=None, sa_column=_ts())


class OAuthConsent(TenantScoped, SQLModel, table=True):
    """A user's remembered consent for one client: which workspace and scopes it may use,
    for which resource and redirect URI. A later request from the client for the same
    resource and redirect URI and no more than these scopes skips the consent page;
    revoking it (account page) also revokes every token the client holds for the user."""

    __tablename__ = "oauth_consent"
    __table_args__ = (sa.UniqueConstraint("user_id", "client_id"),)

    id: str = Field(default_factory=lambda: new_id("cns"), primary_key=True, max_length=32)
    user_id: str = Field(foreign_key="user.id", index=True, max_length=32)
    client_id: str = Field(max_length=2000)  # a DCR id, or a document URL
    client_name: str = Field(default="", max_length=200)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    scopes: str = Field(max_length=500)
    # What the person saw and allowed; None on consents remembered before these were
    # kept (they cover nothing, so the person is asked again).
    resource: str | None = Field(default=None, max_length=500)
    redirect_uri: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class KnowledgeBase(TenantScoped, SQLModel, table=True):
    """A knowledge base: its name and how its chunks were made. The chunks themselves
    (text and embeddings) live in the vector store, one table per knowledge base."""

    __tablename__ = "knowledge_base"
    __table_args__ = (sa.UniqueConstraint("workspace_id", "livemode", "name"),)

    id: str = Field(default_factory=lambda: new_id("kb"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    livemode: bool
    name: str = Field(max_length=200)
    embedding_model: str = Field(max_length=200)
    chunk_tokens: int
    chunk_overlap_tokens: int
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class DocumentStatus(enum.StrEnum):
    INGESTING = "ingesting"
    READY = "ready"


class KbDocument(TenantScoped, SQLModel, table=True):
    """One document of a knowledge base: title, type, size and a keyed hash of its
    bytes (idempotent uploads), never its text."""

    __tablename__ = "kb_document"
    __table_args__ = (sa.UniqueConstraint("knowledge_base_id", "content_hash"),)

    id: str = Field(default_factory=lambda: new_id("doc"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    knowledge_base_id: str = Field(foreign_key="knowledge_base.id", index=True, max_length=32)
    title: str = Field(max_length=300)
    content_type: str = Field(max_length=64)
    # keyed BLAKE2b (per-workspace key) of the uploaded bytes: equal uploads match, and
    # the hash cannot be used to confirm a guess about a document's text.
    content_hash: str = Field(max_length=64)
    byte_size: int
    chunk_count: int = 0
    status: DocumentStatus = Field(sa_column=sa.Column(EnumText(DocumentStatus), nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class KbAttachment(TenantScoped, SQLModel, table=True):
    """A knowledge base an instance retrieves from. Deleted on detach, and when the
    instance is destroyed or fails."""

    __tablename__ = "kb_attachment"
    __table_args__ = (sa.UniqueConstraint("instance_id", "knowledge_base_id"),)

    id: str = Field(default_factory=lambda: new_id("att"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    instance_id: str = Field(foreign_key="instance.id", index=True, max_length=32)
    knowledge_base_id: str = Field(foreign_key="knowledge_base.id", index=True, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class LedgerKind(enum.StrEnum):
    """What a ledger row does. balance = purchases + grants - charges - reversals;
    held = reservations - releases - charges; available = balance - held."""

    PURCHASE = "purchase"  # credits bought (a verified Stripe payment)
    GRANT = "grant"  # credits given by an operator (`auxen credits grant`)
    RESERVATION = "reservation"  # money set aside before work starts
    CHARGE = "charge"  # money spent, out of a reservation
    RELEASE = "release"  # the unspent rest of a reservation, returned
    REVERSAL = "reversal"  # a purchase refunded or disputed


class LedgerEntry(TenantScoped, SQLModel, table=True):
    """One movement of money. Rows are only ever inserted; every balance is a sum."""

    __tablename__ = "ledger_entry"
    __table_args__ = (
        sa.UniqueConstraint("workspace_id", "kind", "reference"),
        # Charges per day and per instance over a window, read from the index alone.
        sa.Index(
            "ix_ledger_entry_workspace_kind_time",
            "workspace_id", "kind", "created_at", "livemode", "instance_id", "amount_micros",
        ),
    )  # fmt: skip

    id: str = Field(default_factory=lambda: new_id("led"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    livemode: bool
    kind: LedgerKind = Field(sa_column=sa.Column(EnumText(LedgerKind), nullable=False))
    amount_micros: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    reservation_id: str | None = Field(default=None, index=True, max_length=32)
    instance_id: str | None = Field(default=None, index=True, max_length=32)
    client_id: str | None = Field(default=None, max_length=2000)
    # Makes a credit idempotent (a Stripe checkout session or event id).
    reference: str | None = Field(default=None, max_length=255)
    note: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False, index=True))


class Reservation(TenantScoped, SQLModel, table=True):
    """Money set aside before work starts: a GPU-time window of an instance, or the most
    a per-token query can cost. Closed when charged and released."""

    # One reservation per GPU window of an instance, whichever process reserves it first
    # (token holds have no window, and NULLs never collide).
    __table_args__ = (sa.UniqueConstraint("instance_id", "window_start"),)

    id: str = Field(default_factory=lambda: new_id("rsv"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    livemode: bool
    purpose: str = Field(max_length=16)  # gpu_time | tokens
    instance_id: str = Field(index=True, max_length=32)
    client_id: str | None = Field(default=None, max_length=2000)
    amount_micros: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    open: bool = Field(default=True, index=True)
    window_start: datetime | None = Field(default=None, sa_column=_ts())
    window_end: datetime | None = Field(default=None, sa_column=_ts())
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    closed_at: datetime | None = Field(default=None, sa_column=_ts())


class CapScope(enum.StrEnum):
    INSTANCE = "instance"  # total spend of one instance
    MONTHLY = "monthly"  # the workspace's spend per calendar month (UTC)
    MAX_BURN = "max_burn"  # $/hour of every running instance together
    CLIENT_MONTHLY = "client_monthly"  # one OAuth client's spend per calendar month


class SpendingCap(TenantScoped, SQLModel, table=True):
    __tablename__ = "spending_cap"
    __table_args__ = (sa.UniqueConstraint("workspace_id", "livemode", "scope", "subject"),)

    id: str = Field(default_factory=lambda: new_id("cap"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    livemode: bool
    scope: CapScope = Field(sa_column=sa.Column(EnumText(CapScope), nullable=False))
    subject: str = Field(default="", max_length=2000)  # instance id or client id
    amount_micros: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class Alert(TenantScoped, SQLModel, table=True):
    """Something the owner must hear about (a cap reached, an instance stopped for it)."""

    id: str = Field(default_factory=lambda: new_id("alr"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    livemode: bool
    kind: str = Field(max_length=64)
    instance_id: str | None = Field(default=None, max_length=32)
    message: str = Field(max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False, index=True))


class StripeEvent(SQLModel, table=True):
    """A Stripe webhook event already applied: each is applied once."""

    __tablename__ = "stripe_event"

    id: str = Field(primary_key=True, max_length=255)
    type: str = Field(max_length=100)
    workspace_id: str | None = Field(default=None, max_length=32)
    processed_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class CredentialProvider(enum.StrEnum):
    RUNPOD = "runpod"  # the workspace's own RunPod account: its pods run there
    HUGGINGFACE = "huggingface"  # a Hugging Face token for the gated models it may use


class ProviderCredential(TenantScoped, SQLModel, table=True):
    """A workspace's own provider credential (BYOK): sealed under the workspace's key,
    never returned; only a fingerprint and its last four characters are shown."""

    __tablename__ = "provider_credential"
    __table_args__ = (sa.UniqueConstraint("workspace_id", "provider"),)

    id: str = Field(default_factory=lambda: new_id("cred"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    provider: CredentialProvider = Field(
        sa_column=sa.Column(EnumText(CredentialProvider), nullable=False)
    )
    sealed: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    # keyed BLAKE2b (the workspace's key) of the secret, shortened: tells two secrets
    # apart without saying anything about either.
    fingerprint: str = Field(max_length=32)
    last4: str = Field(max_length=4)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class Invite(TenantScoped, SQLModel, table=True):
    """An invitation to join a workspace with a role: a single-use link whose token is
    stored only as SHA-256; it expires, and an admin can revoke it."""

    id: str = Field(default_factory=lambda: new_id("inv"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    email: str = Field(max_length=320)
    role: Role = Field(sa_column=sa.Column(EnumText(Role), nullable=False))
    token_hash: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False, unique=True))
    invited_by: str = Field(default="", max_length=200)  # the actor's label
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    expires_at: datetime = Field(sa_column=_ts(nullable=False))
    accepted_at: datetime | None = Field(default=None, sa_column=_ts())
    accepted_by: str | None = Field(default=None, max_length=32)  # a user id
    revoked_at: datetime | None = Field(default=None, sa_column=_ts())


class AuditEvent(TenantScoped, SQLModel, table=True):
    """Who did what to which object, when and from where. Ids, names of actions and
    small numbers only: never prompts, documents, keys or any other content."""

    __tablename__ = "audit_event"

    id: str = Field(default_factory=lambda: new_id("aud"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False, index=True))
    actor_type: str = Field(max_length=16)  # user | api_key | oauth_client | operator | system
    actor_id: str | None = Field(default=None, max_length=2000)
    actor_label: str = Field(default="", max_length=400)
    action: str = Field(max_length=64)
    target_type: str | None = Field(default=None, max_length=32)
    target_id: str | None = Field(default=None, max_length=2000)
    address: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=200)
    detail: str = Field(default="{}", max_length=2000)  # JSON of ids and numbers


class Incident(SQLModel, table=True):
    """A platform incident shown on /status (not a tenant's data: operators post it)."""

    id: str = Field(default_factory=lambda: new_id("inc"), primary_key=True, max_length=32)
    title: str = Field(max_length=200)
    severity: str = Field(max_length=16)  # minor | major | critical
    status: str = Field(max_length=16)  # investigating | identified | monitoring | resolved
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False, index=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    resolved_at: datetime | None = Field(default=None, sa_column=_ts())


class IncidentUpdate(SQLModel, table=True):
    __tablename__ = "incident_update"

    id: str = Field(default_factory=lambda: new_id("incu"), primary_key=True, max_length=32)
    incident_id: str = Field(foreign_key="incident.id", index=True, max_length=32)
    status: str = Field(max_length=16)
    message: str = Field(max_length=2000)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class Conversation(TenantScoped, SQLModel, table=True):
    """A conversation kept for an instance provisioned with `history: true`. Its turns are
    sealed (`ConversationTurn`); this row holds only ids, counts and times."""

    id: str = Field(default_factory=lambda: new_id("conv"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    instance_id: str = Field(foreign_key="instance.id", index=True, max_length=32)
    livemode: bool
    turns: int = 0
    tokens: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class ConversationTurn(TenantScoped, SQLModel, table=True):
    """One exchange (the new messages of a query and the answer), sealed under the
    workspace's key: never plaintext. Deleted with its conversation and instance."""

    __tablename__ = "conversation_turn"
    __table_args__ = (sa.UniqueConstraint("conversation_id", "seq"),)

    id: str = Field(default_factory=lambda: new_id("turn"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    conversation_id: str = Field(foreign_key="conversation.id", index=True, max_length=32)
    seq: int
    tokens: int
    sealed: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class Notification(TenantScoped, SQLModel, table=True):
    """An event worth telling a person (see auxen.notify.events), queued for delivery.
    Ids, kinds and amounts only: never prompt or completion text."""

    __table_args__ = (sa.UniqueConstraint("workspace_id", "dedupe_key"),)

    id: str = Field(default_factory=lambda: new_id("evt"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    livemode: bool = True
    event: str = Field(max_length=64)
    data_json: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    # The person a personal security event is about (they are told too).
    user_id: str | None = Field(default=None, max_length=32)
    # At most one notification per key (a "nearly reached" warning once per period).
    dedupe_key: str | None = Field(default=None, max_length=200)
    # Set once its deliveries are made (one row per address and webhook endpoint).
    fanned_out_at: datetime | None = Field(default=None, sa_column=_ts(index=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False, index=True))


class NotificationDelivery(TenantScoped, SQLModel, table=True):
    """One notification to one address or webhook endpoint: pending until delivered (or
    failed after the last retry). A worker claims it with a lease before sending, and
    marks it delivered only while it still holds that lease."""

    __tablename__ = "notification_delivery"
    __table_args__ = (sa.UniqueConstraint("notification_id", "channel", "target"),)

    id: str = Field(default_factory=lambda: new_id("dlv"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    notification_id: str = Field(foreign_key="notification.id", index=True, max_length=32)
    event: str = Field(max_length=64)
    channel: str = Field(max_length=16)  # email | webhook
    target: str = Field(max_length=400)  # an email address, or a webhook endpoint id
    state: str = Field(max_length=16, index=True)  # pending | delivered | failed
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_column=_ts(nullable=False, index=True))
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = Field(default=None, sa_column=_ts())
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False, index=True))
    delivered_at: datetime | None = Field(default=None, sa_column=_ts())


class NotificationAttempt(TenantScoped, SQLModel, table=True):
    """The delivery log: one row per try, with what the receiver answered."""

    __tablename__ = "notification_attempt"

    id: str = Field(default_factory=lambda: new_id("nta"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    delivery_id: str = Field(foreign_key="notification_delivery.id", index=True, max_length=32)
    attempt: int
    ok: bool
    status_code: int | None = None
    error: str | None = Field(default=None, max_length=500)
    duration_ms: float
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class WebhookEndpoint(TenantScoped, SQLModel, table=True):
    """Where a workspace's notifications are POSTed, signed with a secret shown once and
    stored sealed. `events` is a comma-separated list, or "*" for every event."""

    __tablename__ = "webhook_endpoint"

    id: str = Field(default_factory=lambda: new_id("whe"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    # Per mode, like Stripe's: test-mode events go to test-mode endpoints only.
    livemode: bool = Field(
        default=True, sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.true())
    )
    url: str = Field(max_length=2000)
    secret_sealed: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    events: str = Field(default="*", max_length=1000)
    # The endpoint `PUT /v1/alerts/webhook` manages (the workspace's alert webhook).
    alerts: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class NotificationPreference(TenantScoped, SQLModel, table=True):
    """Where one event goes for one workspace: email to which roles, and webhooks or not.
    Without a row the defaults apply (see auxen.notify.events); owners always get security
    events by email whatever this says."""

    __tablename__ = "notification_preference"
    __table_args__ = (sa.UniqueConstraint("workspace_id", "event"),)

    id: str = Field(default_factory=lambda: new_id("npf"), primary_key=True, max_length=32)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=32)
    event: str = Field(max_length=64)
    email_roles: str = Field(default="owner", max_length=64)  # comma-separated roles
    webhook: bool = True
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
