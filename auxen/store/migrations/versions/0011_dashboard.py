"""dashboard: covering indexes for usage and charges by workspace and time

The dashboard sums a workspace's usage rows and ledger charges per day and per instance
over a window of days. With only single-column indexes SQLite walks every row of the
workspace through `workspace_id`; these let it read just the window, from the index alone.

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_usage_record_workspace_time",
        "usage_record",
        ["workspace_id", "created_at", "instance_id", "prompt_tokens", "completion_tokens"],
    )
    op.create_index(
        "ix_ledger_entry_workspace_kind_time",
        "ledger_entry",
        ["workspace_id", "kind", "created_at", "livemode", "instance_id", "amount_micros"],
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_entry_workspace_kind_time", table_name="ledger_entry")
    op.drop_index("ix_usage_record_workspace_time", table_name="usage_record")
