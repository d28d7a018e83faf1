"""The schema revision this code needs, and the database's, read without importing Alembic.

Alembic (with mako and pygments) costs about 10 MB of resident memory; a runner only needs to know
whether the database is migrated, so start-up reads the version table with one plain query.
A test keeps HEAD equal to the newest migration in storage/migrations.
"""

from __future__ import annotations

from sqlalchemy import Column, MetaData, String, Table, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

HEAD = "0004_http_jobs"
VERSION_TABLE = "scheduler_alembic_version"

_version = Table(VERSION_TABLE, MetaData(), Column("version_num", String(32), primary_key=True))


async def database_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at; None when it was never migrated (no version table)."""
    async with engine.connect() as conn:
        try:
            value = (await conn.execute(select(_version.c.version_num))).scalar()
        except DBAPIError as exc:
            if _missing_table(exc):
                return None
            raise
    return str(value) if value is not None else None


def _missing_table(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return "no such table" in text or "does not exist" in text or "doesn't exist" in text
