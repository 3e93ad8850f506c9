"""The running parts of one control plane, built once and shared by every adapter."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from auxen.auth.authenticate import KeyAuthenticator
from auxen.billing.alerts import Alerts
from auxen.billing.catalog import PriceBook, load_prices
from auxen.billing.ledger import Ledger
from auxen.billing.meter import GpuMeter
from auxen.billing.retention import purge_deleted_workspaces
from auxen.billing.stripe_payments import StripePayments
from auxen.config import ConfigError, Settings
from auxen.inference.fairness import Fairness
from auxen.inference.gateway import InferenceGateway
from auxen.inference.lifecycle import InstanceManager
from auxen.inference.providers import build_provider
from auxen.inference.providers.base import Provider
from auxen.inference.shared_hosts import stop_idle_hosts
from auxen.inference.usage import UsageRecorder
from auxen.kb.service import KnowledgeEngine
from auxen.notify.worker import NotificationWorker
from auxen.store.db import Database
from auxen.tools import audit

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    db: Database
    provider: Provider
    instances: InstanceManager
    auth: KeyAuthenticator
    usage: UsageRecorder
    gateway: InferenceGateway
    kb: KnowledgeEngine
    prices: PriceBook
    ledger: Ledger
    meter: GpuMeter
    payments: StripePayments
    alerts: Alerts
    notifier: NotificationWorker
    fairness: Fairness = field(init=False)

    def __post_init__(self) -> None:
        self.fairness = Fairness(self.settings)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        settings.master_key_bytes  # noqa: B018  (fail fast in production without a key)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.requires_email_proof and not settings.smtp_host:
            log.warning(
                "new accounts must confirm their email address, but no AUXEN_SMTP_HOST is "
                "set, so no confirmation link can be sent: set one, or turn the rule off "
                "with AUXEN_EMAIL_VERIFICATION=false"
            )
        db = Database(settings.resolved_database_url, role=settings.database_role or None)
        provider = build_provider(settings)
        auth = KeyAuthenticator(db)
        usage = UsageRecorder(db, settings.usage_flush_interval_s)
        prices = load_prices(settings.prices_file)
        ledger = Ledger(db)
        gateway = InferenceGateway(db, settings, usage, ledger, prices.shared_small)
        kb = KnowledgeEngine(settings)

        def forget_instance(instance_id: str) -> None:
            auth.forget_instance(instance_id)
            gateway.forget(instance_id)
            kb.forget_attachments(instance_id)

        alerts = Alerts(db, settings.master_key_bytes, production=settings.is_production)
        manager = InstanceManager(db, provider, settings, on_change=forget_instance, prices=prices)
        meter = GpuMeter(
            db, ledger, settings.billing_tick_s, destroy=manager.destroy, alerts=alerts,
            stale_hold_s=settings.billing_stale_hold_s, keep_until=manager.keep_until,
            token_prices=prices.shared_small,
        )  # fmt: skip
        payments = StripePayments(db, ledger, settings)

        async def sweep_audit() -> None:
            await audit.sweep(db, settings.audit_retention_days)

        manager.housekeeping.append(sweep_audit)

        async def scale_idle_hosts_to_zero() -> None:
            await stop_idle_hosts(manager, settings.shared_host_idle_s)

        manager.housekeeping.append(scale_idle_hosts_to_zero)

        async def purge_deleted() -> None:
            await purge_deleted_workspaces(db, settings.deleted_workspace_retention_days)

        manager.housekeeping.append(purge_deleted)
        return cls(
            settings, db, provider, manager, auth, usage, gateway, kb, prices, ledger, meter,
            payments, alerts, NotificationWorker(db, settings),
        )  # fmt: skip

    async def start(self, *, background: bool = True) -> None:
        await self.db.migrate()
        if await self.db.bypasses_row_security():
            message = (
                "the database role can bypass row-level security; connect as a role "
                "without SUPERUSER or BYPASSRLS, or set AUXEN_DATABASE_ROLE"
            )
            if self.settings.is_production:
                raise ConfigError(message)
            log.warning(message)
        await self.instances.reconcile()
        await self.meter.run_once()  # settle what a crash left reserved
        if background:
            self.instances.start_reconciler()
            self.meter.start()
            self.usage.start()
            self.notifier.start()

    async def close(self) -> None:
        await self.notifier.close()
        await self.meter.close()
        await self.instances.close()
        await self.gateway.settled()
        await self.gateway.close()
        await self.usage.close()
        await self.auth.close()
        await self.kb.close()
        await self.db.close()
