"""account keys record who made them (and can be disabled); webhook endpoints get a mode

Every api_key row gets the person who made it (`created_by_user_id`), how it was made
(`created_via`) and `disabled_at` / `disabled_reason`. Existing keys are backfilled:
- from the audit log where it still names the maker: a key made by a person (the
  dashboard) is theirs; a key made by another key belongs to that key's person (chains
  are followed);
- otherwise (the first key `auxen init` printed, or events past the audit retention) an
  account key is attributed to the workspace's owner, `created_via = 'migration'`: it
  keeps exactly the rights it had, and a later ownership transfer lowers it like the
  owner's own keys. Instance keys without an audit record keep no creator (they are not
  bound to one).
webhook_endpoint gets `livemode` (existing endpoints are live).

Revision ID: 0015
Revises: 0014
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READ_TABLES = ("api_key", "audit_event", "membership")


@contextmanager
def _owner_sees_every_row(conn: sa.Connection) -> Iterator[None]:
    """On PostgreSQL, tables under FORCEd row-level security hide rows from their owner
    too (the migration's user); lift FORCE for the backfill, inside this transaction,
    and restore exactly what was there."""
    forced: list[str] = []
    if conn.dialect.name == "postgresql":
        for table in READ_TABLES:
            row = conn.execute(
                sa.text("SELECT relforcerowsecurity FROM pg_class WHERE relname = :t"),
                {"t": table},
            ).first()
            if row is not None and row[0]:
                conn.execute(sa.text(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY"))
                forced.append(table)
    try:
        yield
    finally:
        for table in forced:
            conn.execute(sa.text(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY"))


def _backfill(conn: sa.Connection) -> None:
    keys = conn.execute(sa.text("SELECT id, workspace_id, kind FROM api_key")).all()
    made = conn.execute(
        sa.text(
            "SELECT target_id, actor_type, actor_id FROM audit_event "
            "WHERE action = 'key.create' AND target_type = 'api_key'"
        )
    ).all()
    maker = {target: (actor_type, actor_id) for target, actor_type, actor_id in made}
    owners: dict[str, str] = dict(
        conn.execute(
            sa.text("SELECT workspace_id, user_id FROM membership WHERE role = 'owner'")
        ).all()
    )
    creator: dict[str, tuple[str | None, str]] = {}
    for key_id, workspace_id, kind in keys:
        actor_type, actor_id = maker.get(key_id, (None, None))
        if actor_type == "user" and actor_id:
            creator[key_id] = (actor_id, "person")
        elif actor_type is None and kind == "account":
            creator[key_id] = (owners.get(workspace_id), "migration")
    # Keys made by keys: follow the chain to a person (a chain is at most as long as
    # the number of keys).
    for _ in range(len(keys)):
        changed = False
        for key_id, _, _ in keys:
            actor_type, actor_id = maker.get(key_id, (None, None))
            if key_id in creator or actor_type != "api_key" or actor_id not in creator:
                continue
            creator[key_id] = (creator[actor_id][0], "api_key")
            changed = True
        if not changed:
            break
    for key_id, workspace_id, kind in keys:
        user_id, via = creator.get(key_id, (None, "migration"))
        if user_id is None and kind == "account":
            user_id = owners.get(workspace_id)
        conn.execute(
            sa.text("UPDATE api_key SET created_by_user_id = :u, created_via = :v WHERE id = :k"),
            {"u": user_id, "v": via, "k": key_id},
        )


def upgrade() -> None:
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.add_column(sa.Column("created_by_user_id", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column(
                "created_via", sa.String(length=16), nullable=False, server_default="migration"
            )
        )
        batch_op.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("disabled_reason", sa.String(length=64), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_api_key_created_by_user_id"), ["created_by_user_id"], unique=False
        )
    conn = op.get_bind()
    with _owner_sees_every_row(conn):
        _backfill(conn)
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.alter_column("created_via", server_default=None)
    with op.batch_alter_table("webhook_endpoint", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("livemode", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_endpoint", schema=None) as batch_op:
        batch_op.drop_column("livemode")
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_key_created_by_user_id"))
        batch_op.drop_column("disabled_reason")
        batch_op.drop_column("disabled_at")
        batch_op.drop_column("created_via")
        batch_op.drop_column("created_by_user_id")
