"""billing: credits ledger, reservations, spending caps, alerts, Stripe events

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = True) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("workspace", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stripe_customer_id", sa.String(length=255), nullable=True))
        batch_op.add_column(
            sa.Column("stripe_test_customer_id", sa.String(length=255), nullable=True)
        )
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idle_timeout_s", sa.Integer(), nullable=True))
        batch_op.add_column(_ts("last_query_at"))
        batch_op.add_column(sa.Column("client_id", sa.String(length=2000), nullable=True))
    op.create_table(
        "ledger_entry",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("reservation_id", sa.String(length=32), nullable=True),
        sa.Column("instance_id", sa.String(length=32), nullable=True),
        sa.Column("client_id", sa.String(length=2000), nullable=True),
        sa.Column("reference", sa.String(length=255), nullable=True),
        sa.Column("note", sa.String(length=200), nullable=False),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspace.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workspace_id", "kind", "reference"),
    )
    with op.batch_alter_table("ledger_entry", schema=None) as batch_op:
        for column in ("workspace_id", "reservation_id", "instance_id", "created_at"):
            batch_op.create_index(batch_op.f(f"ix_ledger_entry_{column}"), [column], unique=False)
    op.create_table(
        "reservation",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=False),
        sa.Column("client_id", sa.String(length=2000), nullable=True),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=False),
        _ts("window_start"),
        _ts("window_end"),
        _ts("created_at", nullable=False),
        _ts("closed_at"),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspace.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("instance_id", "window_start"),
    )
    with op.batch_alter_table("reservation", schema=None) as batch_op:
        for column in ("workspace_id", "instance_id", "open"):
            batch_op.create_index(batch_op.f(f"ix_reservation_{column}"), [column], unique=False)
    op.create_table(
        "spending_cap",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=2000), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        _ts("updated_at", nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspace.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workspace_id", "livemode", "scope", "subject"),
    )
    with op.batch_alter_table("spending_cap", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_spending_cap_workspace_id"), ["workspace_id"], unique=False
        )
    op.create_table(
        "alert",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=True),
        sa.Column("message", sa.String(length=500), nullable=False),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspace.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("alert", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_workspace_id"), ["workspace_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_alert_created_at"), ["created_at"], unique=False)
    op.create_table(
        "stripe_event",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=True),
        _ts("processed_at", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    for table in ("stripe_event", "alert", "spending_cap", "reservation", "ledger_entry"):
        op.drop_table(table)
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.drop_column("client_id")
        batch_op.drop_column("last_query_at")
        batch_op.drop_column("idle_timeout_s")
    with op.batch_alter_table("workspace", schema=None) as batch_op:
        batch_op.drop_column("stripe_test_customer_id")
        batch_op.drop_column("stripe_customer_id")
