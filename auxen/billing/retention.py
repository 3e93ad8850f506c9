"""What a deleted workspace leaves behind, and for how long.

Deleting a workspace deletes everything in it except its financial and audit records:
the ledger, its reservations and the audit log (ids, amounts and actions; never content),
which must outlive the customer relationship. The workspace row stays too, scrubbed to
its id and Stripe customer ids and marked `deleted_at`, so those rows keep their
reference; no key, member or session reaches it. After
`AUXEN_DELETED_WORKSPACE_RETENTION_DAYS` they are purged with it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import col

from auxen.store.db import Database
from auxen.store.models import AuditEvent, LedgerEntry, Reservation, Workspace

# Tables whose rows of a deleted workspace are kept for the retention period.
KEPT_RECORDS = (LedgerEntry, Reservation, AuditEvent)
KEPT_TABLES = frozenset(str(model.__tablename__) for model in KEPT_RECORDS)


def is_kept_record(table: sa.Table) -> bool:
    return table.name in KEPT_TABLES


def deleted_workspaces() -> sa.Select[str]:
    """The ids of deleted workspaces (their audit log is not swept by age)."""
    return sa.select(col(Workspace.id)).where(col(Workspace.deleted_at).is_not(None))


async def purge_deleted_workspaces(db: Database, retention_days: int) -> int:
    """Delete the kept records, and then the row, of workspaces deleted longer ago than
    the retention period; how many workspaces went."""
    cutoff = datetime.now(UTC) - timedelta(days=retention_days)
    expired = sa.select(col(Workspace.id)).where(col(Workspace.deleted_at) < cutoff)
    async with db.engine.begin() as conn:
        ids = list((await conn.execute(expired)).scalars())
        if not ids:
            return 0
        for model in KEPT_RECORDS:
            await conn.execute(sa.delete(model).where(col(model.workspace_id).in_(ids)))
        await conn.execute(sa.delete(Workspace).where(col(Workspace.id).in_(ids)))
    return len(ids)
