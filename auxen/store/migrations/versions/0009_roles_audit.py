"""roles and audit: account keys get a role, invites, the audit log, status incidents

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = True) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    # Keys made before roles existed were made by `auxen init` for the owner.
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("role", sa.String(length=16), nullable=False, server_default="owner")
        )
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.alter_column("role", server_default=None)
    op.create_table(
        "invite",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("invited_by", sa.String(length=200), nullable=False),
        _ts("created_at", nullable=False),
        _ts("expires_at", nullable=False),
        _ts("accepted_at"),
        sa.Column("accepted_by", sa.String(length=32), nullable=True),
        _ts("revoked_at"),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspace.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("invite", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_invite_workspace_id"), ["workspace_id"], unique=False)
    op.create_table(
        "audit_event",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        _ts("created_at", nullable=False),
        sa.Column("actor_type", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.String(length=2000), nullable=True),
        sa.Column("actor_label", sa.String(length=400), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=True),
        sa.Column("target_id", sa.String(length=2000), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=200), nullable=True),
        sa.Column("detail", sa.String(length=2000), nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspace.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        for column in ("workspace_id", "created_at"):
            batch_op.create_index(batch_op.f(f"ix_audit_event_{column}"), [column], unique=False)
    op.create_table(
        "incident",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        _ts("resolved_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("incident", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_incident_created_at"), ["created_at"], unique=False)
    op.create_table(
        "incident_update",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("incident_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message", sa.String(length=2000), nullable=False),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["incident.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("incident_update", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_incident_update_incident_id"), ["incident_id"], unique=False
        )


def downgrade() -> None:
    op.drop_table("incident_update")
    op.drop_table("incident")
    op.drop_table("audit_event")
    op.drop_table("invite")
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.drop_column("role")
