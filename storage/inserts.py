"""INSERT statements that skip rows violating a unique constraint, on every engine."""

from __future__ import annotations

from sqlalchemy import Insert, Table, insert
from sqlalchemy.ext.asyncio import AsyncConnection

# Engines with a native "skip conflicting rows" insert; others get a plain INSERT (conflicts raise).
SUPPORTED = ("postgresql", "sqlite", "mysql", "mariadb")


def insert_ignoring_conflicts(conn: AsyncConnection, table: Table) -> Insert:
    """ON CONFLICT DO NOTHING (PostgreSQL, SQLite) or INSERT IGNORE (MariaDB/MySQL)."""
    # Dialect modules are imported on use: each pulls in all of its driver adapters (megabytes of RSS).
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    if dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        return mysql_insert(table).prefix_with("IGNORE")
    return insert(table)
