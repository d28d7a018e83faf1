"""Migrations build exactly storage.schema on every engine, and the schema behaves the same everywhere."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import exc, insert, select
from sqlalchemy.engine import Connection

from storage import schema
from storage.engine import create_engine
from storage.migrate import VERSION_TABLE, current, head, include_name, target_metadata, upgrade
from storage.revision import HEAD

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


def _diff(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "include_name": include_name, "version_table": VERSION_TABLE}
    )
    return list(compare_metadata(context, target_metadata()))


def _run(scheduled_for: datetime, attempt: int = 1, scheduler: str = "digest") -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "scheduler": scheduler,
        "scheduled_for": scheduled_for,
        "attempt": attempt,
        "trigger": "schedule",
        "status": "running",
        "node": "node-a",
    }


async def test_upgrade_empty_database_to_head_matches_metadata(db_url: str) -> None:
    assert await current(db_url) is None
    await upgrade(db_url)
    assert await current(db_url) == head() == HEAD
    await upgrade(db_url)  # idempotent: a second node starting up does nothing

    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_utc_datetime_round_trips_microseconds_and_tz(db_url: str) -> None:
    await upgrade(db_url)
    # Given in UTC+02:00 with microseconds; must come back as the same instant, aware, in UTC.
    given = datetime(2025, 3, 30, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(schema.runs).values(_run(given)))
        async with engine.connect() as conn:
            got = (await conn.execute(select(schema.runs.c.scheduled_for))).scalar_one()
            assert got == given
            assert got.tzinfo is UTC
            assert got.microsecond == 123456
            assert got.hour == 1
            # Filtering by an aware datetime finds the row too (bind side converts to naive UTC).
            found = await conn.execute(select(schema.runs.c.id).where(schema.runs.c.scheduled_for == given))
            assert found.scalar_one_or_none() is not None
    finally:
        await engine.dispose()


async def test_claim_constraint_rejects_duplicate_fire_time(db_url: str) -> None:
    await upgrade(db_url)
    fire = datetime(2025, 1, 1, 12, 0, 0, 500000, tzinfo=UTC)
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(schema.runs).values(_run(fire)))
            # Distinct rows: next attempt, another microsecond, another scheduler.
            await conn.execute(insert(schema.runs).values(_run(fire, attempt=2)))
            await conn.execute(insert(schema.runs).values(_run(fire + timedelta(microseconds=1))))
            await conn.execute(insert(schema.runs).values(_run(fire, scheduler="other")))
        with pytest.raises(exc.IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(insert(schema.runs).values(_run(fire)))
        async with engine.connect() as conn:
            count = len((await conn.execute(select(schema.runs.c.id))).all())
            assert count == 4
    finally:
        await engine.dispose()


@pytest.mark.slow
async def test_concurrent_upgrades_from_several_nodes(db_url: str) -> None:
    """Every node runs the migration at startup; the migration lock makes them queue instead of colliding."""
    command = [sys.executable, "-m", "storage.migrate", "upgrade", "--url", db_url]
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(partial(anyio.run_process, command, cwd=ROOT))
    assert await current(db_url) == HEAD
