"""provider credentials (BYOK): a workspace's own RunPod key and Hugging Face token, sealed

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RULE = (
    "current_setting('auxen.system', true) = 'on' "
    "OR workspace_id = current_setting('auxen.workspace_id', true)"
)


def upgrade() -> None:
    op.create_table(
        "provider_credential",
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("fingerprint", sa.String(length=32), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspace.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workspace_id", "provider"),
    )
    with op.batch_alter_table("provider_credential", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_provider_credential_workspace_id"), ["workspace_id"], unique=False
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE provider_credential ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE provider_credential FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY workspace_isolation ON provider_credential "
            f"USING ({RULE}) WITH CHECK ({RULE})"
        )


def downgrade() -> None:
    with op.batch_alter_table("provider_credential", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_provider_credential_workspace_id"))
    op.drop_table("provider_credential")
