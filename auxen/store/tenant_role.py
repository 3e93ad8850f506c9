"""The PostgreSQL role tenant connections log in as (migration 0016 says why).

One per database (`auxen_tenant_<database>`), so databases on one cluster never share
it: LOGIN, NOINHERIT, no SUPERUSER/BYPASSRLS/CREATEROLE, never a member of the system
role `auxen_app`, so no statement it runs can make it the system. Its password is derived
from the database's scope secret, which only the tables' owner reads. Made (or brought up
to date) by every migration run, under the migration lock; the URL's user needs
CREATEROLE for that (a superuser or the owner the operator set up, see README).
"""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import Connection

SYSTEM_ROLE = "auxen_app"
# No tenant connection may touch these (docs/security.md lists why each is system-only).
PRIVATE_TABLES = (
    "web_session",
    "recovery_code",
    "oauth_client",
    "oauth_code",
    "auth_throttle",
    "stripe_event",
)


def role_name(database: str) -> str:
    plain = re.sub(r"[^a-z0-9_]", "_", database.lower())
    if len(plain) <= 50:
        return f"auxen_tenant_{plain}"
    return f"auxen_tenant_{hashlib.sha256(database.encode()).hexdigest()[:24]}"


def password(secret: str) -> str:
    return hashlib.sha256(f"tenant-login|{secret}".encode()).hexdigest()


def scope_token(workspace_id: str, secret: str) -> str:
    """The `auxen.scope` value naming `workspace_id`, as `auxen_workspace()` checks it."""
    return f"{workspace_id}.{hashlib.sha256(f'{workspace_id}|{secret}'.encode()).hexdigest()}"


def login(connection: Connection) -> tuple[str, str, str]:
    """(role, password, scope secret) of this database, read as the tables' owner."""
    database = connection.exec_driver_sql("SELECT current_database()").scalar_one()
    secret = connection.exec_driver_sql(
        "SELECT secret FROM auxen_scope_key WHERE id = 1"
    ).scalar_one()
    return role_name(database), password(secret), secret


def ensure(connection: Connection) -> None:
    """Create the tenant role if needed and grant it the tables (not the secret)."""
    role, secret_password, _ = login(connection)
    database = connection.exec_driver_sql("SELECT current_database()").scalar_one()
    q = _quoted(role)
    connection.exec_driver_sql(
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                CREATE ROLE {q} LOGIN NOINHERIT NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
            END IF;
        EXCEPTION WHEN duplicate_object THEN NULL;
        END $$
        """
    )
    for statement in (
        f"ALTER ROLE {q} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '{secret_password}'",
        f"REVOKE {SYSTEM_ROLE} FROM {q}",
        f"GRANT CONNECT ON DATABASE {_quoted(database)} TO {q}",
        f"GRANT USAGE ON SCHEMA public TO {q}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {q}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {q}",
        f"REVOKE ALL ON auxen_scope_key, alembic_version FROM {q}",
        # Tables without row security that hold per-person or per-client secrets (even
        # hashed): only system paths read them.
        f"REVOKE ALL ON {', '.join(PRIVATE_TABLES)} FROM {q}",
        # People: their id and email, of the workspace's members only (migration 0016).
        f'REVOKE ALL ON "user" FROM {q}',
        f'GRANT SELECT (id, email) ON "user" TO {q}',
    ):
        connection.exec_driver_sql(statement)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
