"""Relational storage: SQLModel tables, the async engine, migrations and workspace scoping."""
