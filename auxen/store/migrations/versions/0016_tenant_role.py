"""row-level security keyed on roles: tenant connections cannot widen what they see

On PostgreSQL only. Until now every policy admitted all rows when `auxen.system = 'on'`
and one workspace's rows when `auxen.workspace_id` named it: settings any connection can
change, so SQL run on a tenant's connection could see every workspace. Now:

- the system is a role: members of `auxen_app` (the server's system connections `SET
  ROLE` to it) see every row;
- a tenant connection logs in as the database's own tenant role (made at each start by
  `auxen.store.tenant_role`, never a member of `auxen_app`, so it cannot `SET ROLE` to
  it), and sees the rows of the workspace named by `auxen.scope`, a setting that holds
  the workspace id *signed* with a secret only the tables' owner can read
  (`auxen_scope_key`), checked by `auxen_workspace()`. Setting `auxen.scope` to another
  workspace without its signature shows nothing.

Every existing `workspace_isolation` policy is rewritten to the new rule.

Revision ID: 0016
Revises: 0015
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SYSTEM_ROLE = "auxen_app"


def rule(column: str) -> str:
    return f"pg_has_role(current_user, '{SYSTEM_ROLE}', 'MEMBER') OR {column} = auxen_workspace()"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE TABLE auxen_scope_key (id integer PRIMARY KEY, secret text NOT NULL)")
    # gen_random_uuid() draws from the server's strong random source: 244 random bits.
    op.execute(
        "INSERT INTO auxen_scope_key VALUES "
        "(1, replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''))"
    )
    op.execute(f"REVOKE ALL ON auxen_scope_key FROM PUBLIC, {SYSTEM_ROLE}")
    # `auxen.scope` is '<workspace id>.<hex sha256 of "<workspace id>|<secret>">'.
    op.execute(
        """
        CREATE FUNCTION auxen_workspace() RETURNS text
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
            SELECT scope.ws FROM (
                SELECT split_part(current_setting('auxen.scope', true), '.', 1) AS ws,
                       split_part(current_setting('auxen.scope', true), '.', 2) AS sig
            ) scope, auxen_scope_key k
            WHERE k.id = 1 AND scope.ws <> ''
              AND scope.sig = encode(sha256(convert_to(scope.ws || '|' || k.secret, 'UTF8')),
                                     'hex')
        $$
        """
    )
    tables = op.get_bind().exec_driver_sql(
        "SELECT tablename FROM pg_policies "
        "WHERE schemaname = 'public' AND policyname = 'workspace_isolation'"
    )
    for (table,) in tables.all():
        column = "id" if table == "workspace" else "workspace_id"
        op.execute(f"DROP POLICY workspace_isolation ON {table}")
        op.execute(
            f"CREATE POLICY workspace_isolation ON {table} "
            f"USING ({rule(column)}) WITH CHECK ({rule(column)})"
        )
    # People: a tenant connection sees the members of its own workspace (and only their
    # id and email: the tenant role is granted no other column, see tenant_role).
    members = (
        f"pg_has_role(current_user, '{SYSTEM_ROLE}', 'MEMBER') OR EXISTS (SELECT 1 FROM "
        'membership m WHERE m.user_id = "user".id AND m.workspace_id = auxen_workspace())'
    )
    op.execute('ALTER TABLE "user" ENABLE ROW LEVEL SECURITY')
    op.execute('ALTER TABLE "user" FORCE ROW LEVEL SECURITY')
    op.execute(f'CREATE POLICY workspace_members ON "user" USING ({members})')


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    old = (
        "current_setting('auxen.system', true) = 'on' OR {c} = "
        "current_setting('auxen.workspace_id', true)"
    )
    tables = op.get_bind().exec_driver_sql(
        "SELECT tablename FROM pg_policies "
        "WHERE schemaname = 'public' AND policyname = 'workspace_isolation'"
    )
    for (table,) in tables.all():
        column = "id" if table == "workspace" else "workspace_id"
        op.execute(f"DROP POLICY workspace_isolation ON {table}")
        op.execute(
            f"CREATE POLICY workspace_isolation ON {table} "
            f"USING ({old.format(c=column)}) WITH CHECK ({old.format(c=column)})"
        )
    op.execute('DROP POLICY IF EXISTS workspace_members ON "user"')
    op.execute('ALTER TABLE "user" NO FORCE ROW LEVEL SECURITY')
    op.execute('ALTER TABLE "user" DISABLE ROW LEVEL SECURITY')
    op.execute("DROP FUNCTION auxen_workspace()")
    op.execute("DROP TABLE auxen_scope_key")
