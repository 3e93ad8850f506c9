"""consents bound to their resource and redirect URI; people prove their email address

Revision ID: 0014
Revises: 0013

A remembered consent now covers one resource and one redirect URI as well as a client
and scopes; consents remembered before keep NULL there and so cover nothing (the person
is asked once more). `user.email_verified_at` records when a person followed the link
sent to their address; every account that exists before this migration counts as
proven, so upgrading locks nobody out.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("email_verified_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.execute('UPDATE "user" SET email_verified_at = created_at')
    with op.batch_alter_table("oauth_consent", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resource", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("redirect_uri", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("oauth_consent", schema=None) as batch_op:
        batch_op.drop_column("redirect_uri")
        batch_op.drop_column("resource")
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_column("email_verified_at")
