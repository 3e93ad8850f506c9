"""alert webhook: where a workspace's alerts are POSTed, and its sealed signing secret

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workspace", schema=None) as batch_op:
        batch_op.add_column(sa.Column("alert_webhook_url", sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column("alert_webhook_sealed", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workspace", schema=None) as batch_op:
        batch_op.drop_column("alert_webhook_sealed")
        batch_op.drop_column("alert_webhook_url")
