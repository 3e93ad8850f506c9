"""row-level security: the application role and one isolation policy per tenant table

On PostgreSQL only (SQLite has no row security; there the scoped session is the
boundary). The application connects as, or switches to, `auxen_app`: not a superuser,
no BYPASSRLS, not the tables' owner, so the policies bind it. Every tenant table admits a
row only when its workspace is the transaction's `auxen.workspace_id`, or when the
connection acts as the system (`auxen.system = on`). FORCE makes the policies bind the
tables' owner too.

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "auxen_app"
# Every table whose rows belong to one workspace (the models' TenantScoped tables);
# tests/test_isolation.py fails when a tenant table is missing here.
TENANT_TABLES = (
    "membership",
    "api_key",
    "instance",
    "usage_record",
    "oauth_token",
    "oauth_consent",
    "knowledge_base",
    "kb_document",
    "kb_attachment",
    "ledger_entry",
    "reservation",
    "spending_cap",
    "alert",
    "invite",
    "audit_event",
    "conversation",
    "conversation_turn",
    "notification",
    "notification_delivery",
    "notification_attempt",
    "webhook_endpoint",
    "notification_preference",
)
SYSTEM = "current_setting('auxen.system', true) = 'on'"
WORKSPACE = "current_setting('auxen.workspace_id', true)"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                CREATE ROLE {APP_ROLE} NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
            END IF;
        EXCEPTION WHEN duplicate_object THEN NULL;  -- another database's migration won
        END $$
        """
    )
    op.execute(
        f"""
        DO $$ BEGIN
            IF NOT pg_has_role(current_user, '{APP_ROLE}', 'MEMBER') THEN
                EXECUTE 'GRANT {APP_ROLE} TO ' || quote_ident(current_user);
            END IF;
        END $$
        """
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")
    op.execute(
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}"
    )
    op.execute(
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {APP_ROLE}"
    )
    op.execute(f"REVOKE ALL ON alembic_version FROM {APP_ROLE}")
    op.execute(f"GRANT SELECT ON alembic_version TO {APP_ROLE}")
    for table in TENANT_TABLES:
        isolate(table, "workspace_id")
    isolate("workspace", "id")


def isolate(table: str, column: str) -> None:
    rule = f"{SYSTEM} OR {column} = {WORKSPACE}"
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY workspace_isolation ON {table} USING ({rule}) WITH CHECK ({rule})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in (*TENANT_TABLES, "workspace"):
        op.execute(f"DROP POLICY IF EXISTS workspace_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
