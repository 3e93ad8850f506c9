"""Runs Alembic migrations on an existing connection (so async engines can use them)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_to_head(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Row-level security is forced even on the tables' owner; migrations that move
        # data act for the system (see auxen.store.db).
        connection.exec_driver_sql("SET auxen.system = 'on'")
    command.upgrade(alembic_config(connection), "head")
