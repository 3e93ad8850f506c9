"""Runs Alembic migrations on an existing connection (so async engines can use them)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

MIGRATIONS = Path(__file__).parent / "migrations"
# One advisory lock id for "migrating this database" (advisory locks are per database).
MIGRATION_LOCK_ID = 0x4155_5845_4E4D_4947  # "AUXENMIG"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_to_head(connection: Connection) -> None:
    """Any number of processes may call this at once: on PostgreSQL the first takes a
    transaction lock and migrates, the others wait for its commit, then find the schema
    at head and do nothing (SQLite deployments are one process)."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
        # Row-level security is forced even on the tables' owner; migrations that move
        # data act for the system (see auxen.store.db).
        connection.exec_driver_sql("SET auxen.system = 'on'")
    command.upgrade(alembic_config(connection), "head")
    if connection.dialect.name == "postgresql":
        from auxen.store import tenant_role

        tenant_role.ensure(connection)
