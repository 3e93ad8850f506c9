"""Alembic environment: migrations always run on a connection handed in by Auxen."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import auxen.store.models  # noqa: F401  (registers the tables on SQLModel.metadata)

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `auxen migrate` or Database.migrate()")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
