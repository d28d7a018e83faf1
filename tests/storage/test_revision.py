"""storage.revision reads the schema version without Alembic; it must agree with the shipped migrations."""

from __future__ import annotations

import pytest

from storage import migrate, revision
from storage.engine import create_engine

pytestmark = pytest.mark.anyio


def test_head_constant_matches_the_newest_migration() -> None:
    assert migrate.head() == revision.HEAD
    assert revision.VERSION_TABLE == migrate.VERSION_TABLE


async def test_database_revision_before_and_after_migrating(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        assert await revision.database_revision(engine) is None
        await migrate.upgrade(db_url)
        assert await revision.database_revision(engine) == revision.HEAD
    finally:
        await engine.dispose()
