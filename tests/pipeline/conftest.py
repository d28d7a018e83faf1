"""Shared fixtures for the pipeline tests: a migrated engine over ``db_url`` and a helper to add a company.

Kept deliberately small and stable: several test modules build on it.

    async def test_x(engine: AsyncEngine) -> None:
        company_id = await insert_company(engine, "acme", csv_url="file:///data/feed.csv")
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.model import CompanyStatus
from domain.tables import companies
from storage.engine import create_engine
from storage.migrate import upgrade

# A fixed instant for created_at/updated_at of test rows; tests that care about order pass their own.
T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """A fresh database (SQLite, PostgreSQL, MariaDB via ``db_url``) migrated to head; disposed afterwards."""
    await upgrade(db_url)
    eng = create_engine(db_url)
    try:
        yield eng
    finally:
        await eng.dispose()


async def insert_company(
    engine: AsyncEngine,
    name: str,
    *,
    csv_url: str = "file:///nonexistent/sessions.csv",
    status: CompanyStatus | str = CompanyStatus.ACTIVE,
    timezone: str = "Europe/Amsterdam",
    csv_username: str | None = None,
    csv_password_ref: str | None = None,
    default_model: str | None = None,
    created_at: datetime = T0,
    company_id: str | None = None,
) -> str:
    """Insert one company row directly (no validation) and return its id."""
    cid = company_id or str(uuid.uuid4())
    async with engine.begin() as conn:
        await conn.execute(
            insert(companies).values(
                id=cid,
                name=name,
                status=str(status),
                csv_url=csv_url,
                csv_username=csv_username,
                csv_password_ref=csv_password_ref,
                timezone=timezone,
                default_model=default_model,
                created_at=created_at,
                updated_at=created_at,
            )
        )
    return cid
