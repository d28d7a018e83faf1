"""Reading the run records a test's processes wrote, straight from the database (no proxy, no API)."""

from __future__ import annotations

from typing import Any

import anyio
from sqlalchemy import select

from storage.engine import create_engine
from storage.schema import runs


def fetch_runs(url: str, scheduler: str = "probe") -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(select(runs).where(runs.c.scheduler == scheduler))).mappings()
                return [dict(row) for row in rows]
        finally:
            await engine.dispose()

    return anyio.run(read)
