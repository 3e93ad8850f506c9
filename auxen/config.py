"""Configuration: every setting comes from `AUXEN_*` environment variables (or defaults).

Secrets (the master key, provider keys) are read from the environment only and are never
written anywhere except, in development mode, a generated master key kept in the data
directory so a restarted dev server can still open what it sealed.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import secrets
import shlex
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

DEFAULT_VLLM_COMMAND = "vllm serve"


class ConfigError(RuntimeError):
    """The configuration cannot run a server (for example production without a master key)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUXEN_", extra="ignore")

    env: Literal["development", "production"] = "development"
    data_dir: Path = Path("./data")
    database_url: str | None = None
    # PostgreSQL: the role the server's connections switch to, so row-level security binds
    # them even when the URL's user could bypass it; empty when the URL already logs in
    # as a restricted role (see docs/security.md).
    database_role: str = "auxen_app"
    master_key: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None

    provider: Literal["local", "runpod"] = "local"
    # The command that starts vLLM's OpenAI server; the local provider appends the model
    # path and its own flags. GPU hosts: "vllm serve". CPU build: a venv's
    # "python -m vllm.entrypoints.openai.api_server" (its console script is broken).
    vllm_command: str = DEFAULT_VLLM_COMMAND
    vllm_extra_args: str = ""
    vllm_ready_timeout_s: float = 600.0
    vllm_max_model_len: int | None = None
    vllm_dtype: str | None = None
    vllm_cpu_kvcache_gib: int | None = None
    # How long an instance's processes get to exit on SIGTERM before SIGKILL.
    local_stop_grace_s: float = Field(default=15.0, gt=0, le=600)
    # An instance's own watchdog stops it this long after its paid window ends unless
    # the control plane extends it (room for a control plane that extends a bit late).
    watchdog_slack_s: float = Field(default=5.0, ge=0, le=600)

    # The `runpod` provider (AUXEN_PROVIDER=runpod): pods running the vLLM image through
    # RunPod's REST API. The API key is a secret: environment only, sent only to RunPod.
    runpod_api_key: SecretStr | None = None
    runpod_api_url: str = "https://api.runpod.io"
    # Where a pod's port 8000 is reached; {pod_id} is replaced (tests point it at a stand-in).
    runpod_proxy_url: str = "https://{pod_id}-8000.proxy.runpod.net"
    runpod_image: str = "vllm/vllm-openai:v0.11.0"
    runpod_cloud: Literal["SECURE", "COMMUNITY"] = "SECURE"
    runpod_disk_gb: int = Field(default=80, ge=1)
    # Pods this deployment owns are named "<prefix>-<instance id>"; several deployments
    # may share one RunPod account if each has its own prefix.
    runpod_pod_prefix: str = Field(default="auxen", pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    # Large images take long to pull: pods get this long to answer through the proxy.
    runpod_ready_timeout_s: float = Field(default=1200.0, gt=0)
    runpod_request_timeout_s: float = Field(default=30.0, gt=0)
    runpod_max_attempts: int = Field(default=5, ge=1, le=20)
    runpod_max_backoff_s: float = Field(default=60.0, gt=0)
    # Pods run Auxen's pod image (deploy/runpod/Dockerfile: vLLM under a watchdog that
    # stops the pod when its paid window ends unextended); its port is reached here.
    runpod_watchdog: bool = False
    runpod_watchdog_url: str = "https://{pod_id}-8001.proxy.runpod.net"
    # The deployment's Hugging Face token for gated models (a workspace's own sealed token,
    # when BYOK lands, takes precedence per launch).
    hf_token: SecretStr | None = None

    # Model directories the local provider offers (default: <data_dir>/models).
    models_dir: Path | None = None
    # Host and Origin values the MCP endpoint accepts besides the public URL's and
    # loopback's, comma-separated (e.g. "mcp.example.com,auxen.internal:8000").
    allowed_hosts: str = ""
    allowed_origins: str = ""

    # OAuth for remote agents. Registered clients expire when never used, or when idle
    # this long; registrations are limited per client address.
    oauth_access_token_ttl_s: int = Field(default=3600, ge=1, le=3600)
    oauth_unused_client_ttl_s: int = Field(default=24 * 3600, ge=1)
    oauth_idle_client_ttl_s: int = Field(default=90 * 24 * 3600, ge=1)
    oauth_registrations_per_hour: int = Field(default=30, ge=1)

    # Sign-up. A new account proves its email address (a link sent to it) before it can
    # buy credits, invite anyone, make account keys or connect an agent, and sign-up
    # answers alike whether or not the address already has an account (its owner gets
    # an email instead). On by default in production; a deployment without mail can
    # turn it off (then sign-up signs people in at once, and says when an address is
    # taken). Sign-ups are limited per email address and per client address.
    email_verification: bool | None = None
    signups_per_email_per_hour: int = Field(default=5, ge=1)
    signups_per_address_per_hour: int = Field(default=20, ge=1)

    # Billing. GPU time is reserved and charged one window (tick) at a time; instances are
    # destroyed after this long without a query unless they ask otherwise; a per-token
    # query without max_tokens is reserved (and capped) at this many.
    prices_file: Path | None = None
    billing_tick_s: float = Field(default=60.0, ge=1.0, le=3600.0)
    default_idle_timeout_s: int = Field(default=3600, ge=60)
    default_max_tokens: int = Field(default=512, ge=1, le=32768)
    # A per-token hold still open this long belongs to a call that died: released.
    billing_stale_hold_s: float = Field(default=900.0, ge=1.0)
    # Stripe (credits). Live and test-mode keys; the API base is for a local stand-in.
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_test_secret_key: SecretStr | None = None
    stripe_test_webhook_secret: SecretStr | None = None
    stripe_api_base: str | None = None

    # Workspace security: invitations expire after this long; audit events are kept this
    # many days; who to write to about vulnerabilities (security.txt; default: security@
    # the public host); addresses of reverse proxies whose X-Forwarded-For/-Proto are
    # believed (uvicorn's forwarded_allow_ips; "https" behind them turns HSTS on).
    invite_ttl_s: int = Field(default=7 * 24 * 3600, ge=60, le=90 * 24 * 3600)
    audit_retention_days: int = Field(default=365, ge=1)
    # A deleted workspace's ledger, reservations and audit log are kept this long (days).
    deleted_workspace_retention_days: int = Field(default=3650, ge=0)
    security_contact: str | None = None
    forwarded_allow_ips: str = "127.0.0.1"
    status_check_timeout_s: float = Field(default=2.0, gt=0, le=30)

    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Fair use of inference (OpenAI-compatible endpoints and query_instance), per control
    # plane process: requests in flight at once and started per minute, per key and per
    # workspace; over them the answer is 429 with Retry-After.
    inference_key_concurrency: int = Field(default=32, ge=1)
    inference_key_rpm: int = Field(default=3000, ge=1)
    inference_workspace_concurrency: int = Field(default=64, ge=1)
    inference_workspace_rpm: int = Field(default=6000, ge=1)
    max_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    # The shortest TTL or idle timeout an instance may ask for.
    min_lifetime_s: int = Field(default=60, ge=1)
    default_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    reconcile_interval_s: float = Field(default=15.0, gt=0)
    # PostgreSQL: a reconcile leader that stops talking (frozen, partitioned) loses the lead
    # after this long; a pass that runs longer than reconcile_pass_timeout_s is stopped.
    reconcile_leader_timeout_s: float = Field(default=10.0, ge=1)
    reconcile_pass_timeout_s: float = Field(default=300.0, gt=0)
    # A process bringing up or destroying an instance holds a lease on it, renewed while
    # it works; another process takes the work over only once the lease has lapsed.
    instance_lease_s: float = Field(default=30.0, gt=0)
    usage_flush_interval_s: float = Field(default=0.2, gt=0)
    # A stream's usage row is checkpointed every flush; one not checkpointed for this long
    # lost its process and is marked interrupted by the reconciler.
    usage_stream_stale_s: float = Field(default=30.0, gt=0)
    # A shared-small host with no live instance for this long is stopped (scale to zero);
    # the next instance of its model starts it again.
    shared_host_idle_s: float = Field(default=600.0, gt=0)

    # Knowledge bases. LanceDB lives under <data_dir>/kb unless kb_uri names another
    # directory or an object-storage URI (s3://bucket/prefix); one namespace per workspace.
    kb_uri: str | None = None
    kb_chunk_tokens: int = Field(default=160, ge=32, le=254)
    kb_chunk_overlap_tokens: int = Field(default=32, ge=0, le=128)
    kb_embed_batch_size: int = Field(default=32, ge=1, le=1024)
    # An OpenAI-compatible /v1/embeddings server (a vLLM pooling server, say) instead of
    # the bundled all-MiniLM-L6-v2 running in this process.
    kb_embeddings_url: str | None = None
    kb_embeddings_model: str | None = None
    kb_embeddings_api_key: SecretStr | None = None
    # Networks (comma-separated CIDRs) the embeddings server may be reached on although
    # they are not public, over plain http and on any port (see auxen/outbound.py).
    kb_embeddings_allow_networks: str = ""
    kb_ann_threshold: int = Field(default=20_000, ge=256)
    kb_max_document_bytes: int = Field(default=8 * 1_048_576, ge=1024)
    kb_max_documents_per_kb: int = Field(default=10_000, ge=1)
    kb_max_documents_per_request: int = Field(default=64, ge=1)
    kb_max_knowledge_bases: int = Field(default=100, ge=1)

    # Conversation history (instances provisioned with history: true): the oldest turns
    # are dropped past either bound; tokens are counted roughly (4 bytes of text each).
    history_max_turns: int = Field(default=50, ge=1, le=10_000)
    history_max_tokens: int = Field(default=4096, ge=16, le=1_000_000)

    # Notifications. Email goes out over SMTP when a host is set (else the channel is off);
    # STARTTLS upgrades a plain connection, TLS is implicit TLS (port 465).
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = True
    smtp_tls: bool = False
    smtp_from: str = "Auxen <notifications@auxen.localhost>"
    smtp_timeout_s: float = Field(default=30.0, gt=0)
    # The delivery worker looks for due deliveries this often, holds a claim this long,
    # and retries a failing one up to this many times, waiting base * 2^n between tries.
    notify_poll_s: float = Field(default=1.0, gt=0)
    notify_lease_s: float = Field(default=60.0, gt=0)
    notify_max_attempts: int = Field(default=6, ge=1, le=20)
    notify_backoff_s: float = Field(default=30.0, gt=0)

    # Fetches to URLs someone else chose (webhooks, Client ID Metadata Documents) reach
    # public addresses only, over https on port 443 (auxen/outbound.py). These networks
    # (comma-separated CIDRs, e.g. "10.1.2.0/24,127.0.0.1/32") are allowed besides, on
    # any port and over plain http: an operator's own receivers. None by default.
    outbound_allow_networks: str = ""

    @field_validator("outbound_allow_networks", "kb_embeddings_allow_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        for part in (p.strip() for p in value.split(",")):
            if part:
                try:
                    ipaddress.ip_network(part, strict=False)
                except ValueError:
                    raise ValueError(f"{part!r} is not an address or a network (CIDR)") from None
        return value

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def requires_email_proof(self) -> bool:
        """Whether new accounts must confirm their email address (see email_verification)."""
        return self.is_production if self.email_verification is None else self.email_verification

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def resolved_database_url(self) -> str:
        return normalise_database_url(
            self.database_url or f"sqlite:///{self.data_dir.resolve() / 'auxen.db'}"
        )

    @property
    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.data_dir / "models").resolve()

    @property
    def instances_dir(self) -> Path:
        return self.data_dir.resolve() / "instances"

    @property
    def resolved_kb_uri(self) -> str:
        return (self.kb_uri or str(self.data_dir.resolve() / "kb")).rstrip("/")

    @property
    def vllm_argv(self) -> list[str]:
        return shlex.split(self.vllm_command) + shlex.split(self.vllm_extra_args)

    @cached_property
    def master_key_bytes(self) -> bytes:
        """The 32-byte master key every sealing key is derived from."""
        if self.master_key is not None:
            key = decode_master_key(self.master_key.get_secret_value())
            return check_master_key(key) if self.is_production else key
        if self.is_production:
            raise ConfigError(
                "AUXEN_MASTER_KEY is required when AUXEN_ENV=production "
                "(32 random bytes, base64: make one with `auxen master-key generate`)"
            )
        return _dev_master_key(self.data_dir.resolve())


def normalise_database_url(url: str) -> str:
    """Map plain URLs onto the async drivers Auxen uses (aiosqlite, asyncpg)."""
    for plain, driver in (
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql+psycopg://", "postgresql+asyncpg://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def decode_master_key(value: str, name: str = "AUXEN_MASTER_KEY") -> bytes:
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except ValueError as exc:
        raise ConfigError(f"{name} must be base64") from exc
    if len(key) != 32:
        raise ConfigError(f"{name} must decode to exactly 32 bytes")
    return key


def check_master_key(key: bytes) -> bytes:
    """Refuse keys no random generator makes (each test fails for random bytes with odds
    below one in ten million): few distinct bytes (all zeros, a repeated pattern), only
    printable characters (text typed in), or a run of counting bytes."""
    typed = all(0x20 <= b < 0x7F for b in key)
    if len(set(key)) < 20 or typed or key in (bytes(range(32)), bytes(range(32))[::-1]):
        raise ConfigError(
            "the master key is weak (it is not 32 random bytes); make one with "
            "`auxen master-key generate`"
        )
    return key


def _dev_master_key(data_dir: Path) -> bytes:
    path = data_dir / "master.key"
    if path.exists():
        return decode_master_key(path.read_text().strip())
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    # Several servers may start together on one data directory: the key is written to a
    # file of its own, then linked into place only if no other process got there first
    # (a link never replaces), so all of them use one key and none reads a half-written one.
    draft = data_dir / f".master.key.{os.getpid()}.{secrets.token_hex(4)}"
    draft.touch(mode=0o600)
    draft.write_text(base64.b64encode(key).decode() + "\n")
    try:
        os.link(draft, path)
    except FileExistsError:
        return decode_master_key(path.read_text().strip())
    finally:
        draft.unlink()
    log.warning(
        "development mode: generated a master key at %s; set AUXEN_MASTER_KEY "
        "(and AUXEN_ENV=production) in production",
        path,
    )
    return key
