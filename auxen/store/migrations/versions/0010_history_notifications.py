"""conversation history (sealed turns) and notifications (queue, deliveries, attempts,
webhook endpoints, preferences); the alert webhook becomes a webhook endpoint

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from auxen.store.ids import new_id

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = True) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _ws() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "workspace_id", sa.String(length=32), sa.ForeignKey("workspace.id"), nullable=False
    )


def upgrade() -> None:
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("history", sa.Boolean(), nullable=False, server_default=sa.false())
        )

    op.create_table(
        "conversation",
        sa.Column("id", sa.String(length=32), primary_key=True),
        _ws(),
        sa.Column(
            "instance_id", sa.String(length=32), sa.ForeignKey("instance.id"), nullable=False
        ),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("turns", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
    )
    op.create_index("ix_conversation_workspace_id", "conversation", ["workspace_id"])
    op.create_index("ix_conversation_instance_id", "conversation", ["instance_id"])

    op.create_table(
        "conversation_turn",
        sa.Column("id", sa.String(length=32), primary_key=True),
        _ws(),
        sa.Column(
            "conversation_id",
            sa.String(length=32),
            sa.ForeignKey("conversation.id"),
            nullable=False,
        ),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        _ts("created_at", nullable=False),
        sa.UniqueConstraint("conversation_id", "seq"),
    )
    op.create_index("ix_conversation_turn_workspace_id", "conversation_turn", ["workspace_id"])
    op.create_index(
        "ix_conversation_turn_conversation_id", "conversation_turn", ["conversation_id"]
    )

    op.create_table(
        "notification",
        sa.Column("id", sa.String(length=32), primary_key=True),
        _ws(),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("data_json", sa.Text(), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=True),
        sa.Column("dedupe_key", sa.String(length=200), nullable=True),
        _ts("fanned_out_at"),
        _ts("created_at", nullable=False),
        sa.UniqueConstraint("workspace_id", "dedupe_key"),
    )
    op.create_index("ix_notification_workspace_id", "notification", ["workspace_id"])
    op.create_index("ix_notification_fanned_out_at", "notification", ["fanned_out_at"])
    op.create_index("ix_notification_created_at", "notification", ["created_at"])

    op.create_table(
        "notification_delivery",
        sa.Column("id", sa.String(length=32), primary_key=True),
        _ws(),
        sa.Column(
            "notification_id",
            sa.String(length=32),
            sa.ForeignKey("notification.id"),
            nullable=False,
        ),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=400), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("next_attempt_at", nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        _ts("lease_expires_at"),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        _ts("created_at", nullable=False),
        _ts("delivered_at"),
        sa.UniqueConstraint("notification_id", "channel", "target"),
    )
    for column in ("workspace_id", "notification_id", "state", "next_attempt_at", "created_at"):
        op.create_index(f"ix_notification_delivery_{column}", "notification_delivery", [column])

    op.create_table(
        "notification_attempt",
        sa.Column("id", sa.String(length=32), primary_key=True),
        _ws(),
        sa.Column(
            "delivery_id",
            sa.String(length=32),
            sa.ForeignKey("notification_delivery.id"),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        _ts("created_at", nullable=False),
    )
    op.create_index(
        "ix_notification_attempt_workspace_id", "notification_attempt", ["workspace_id"]
    )
    op.create_index("ix_notification_attempt_delivery_id", "notification_attempt", ["delivery_id"])

    webhook_endpoint = op.create_table(
        "webhook_endpoint",
        sa.Column("id", sa.String(length=32), primary_key=True),
        _ws(),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("secret_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("events", sa.String(length=1000), nullable=False),
        sa.Column("alerts", sa.Boolean(), nullable=False),
        _ts("created_at", nullable=False),
    )
    op.create_index("ix_webhook_endpoint_workspace_id", "webhook_endpoint", ["workspace_id"])

    op.create_table(
        "notification_preference",
        sa.Column("id", sa.String(length=32), primary_key=True),
        _ws(),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("email_roles", sa.String(length=64), nullable=False),
        sa.Column("webhook", sa.Boolean(), nullable=False),
        _ts("updated_at", nullable=False),
        sa.UniqueConstraint("workspace_id", "event"),
    )
    op.create_index(
        "ix_notification_preference_workspace_id", "notification_preference", ["workspace_id"]
    )

    # Each workspace's alert webhook (0008) becomes a webhook endpoint that receives the
    # same events, with the same sealed secret; PUT /v1/alerts/webhook now manages it.
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT id, alert_webhook_url, alert_webhook_sealed FROM workspace "
            "WHERE alert_webhook_url IS NOT NULL AND alert_webhook_sealed IS NOT NULL"
        )
    ).all()
    now = datetime.now(UTC)
    if rows:
        op.bulk_insert(
            webhook_endpoint,
            [
                {
                    "id": new_id("whe"),
                    "workspace_id": ws,
                    "url": url,
                    "secret_sealed": sealed,
                    "events": "spend_limit_reached",
                    "alerts": True,
                    "created_at": now,
                }
                for ws, url, sealed in rows
            ],
        )
        # One place holds it from now on (the columns stay for older code; a later
        # migration can drop them).
        conn.execute(
            sa.text("UPDATE workspace SET alert_webhook_url = NULL, alert_webhook_sealed = NULL")
        )


def downgrade() -> None:
    op.drop_table("notification_preference")
    op.drop_table("webhook_endpoint")
    op.drop_table("notification_attempt")
    op.drop_table("notification_delivery")
    op.drop_table("notification")
    op.drop_table("conversation_turn")
    op.drop_table("conversation")
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.drop_column("history")
