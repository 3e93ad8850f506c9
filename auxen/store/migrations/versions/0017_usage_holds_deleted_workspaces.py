"""usage rows name the hold they settle; deleted workspaces keep their financial records

`usage_record.reservation_id`: the per-token hold a call's usage is charged against, so a
stream cut by a crash is charged, once, for what its last checkpoint recorded.
`workspace.deleted_at`: a deleted workspace keeps its row (name scrubbed), its ledger,
reservations and audit log for `AUXEN_DELETED_WORKSPACE_RETENTION_DAYS`; then they go.

Revision ID: 0017
Revises: 0016
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_record", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reservation_id", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_usage_record_reservation_id", ["reservation_id"])
    with op.batch_alter_table("workspace", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workspace", schema=None) as batch_op:
        batch_op.drop_column("deleted_at")
    with op.batch_alter_table("usage_record", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_record_reservation_id")
        batch_op.drop_column("reservation_id")
