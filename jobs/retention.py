"""Execution-log retention: rows older than a maximum age, and beyond a maximum count per job, are deleted.

Bounded batches keep each transaction short, so the dispatcher's inserts are never blocked for long.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.tables import executions


async def purge_older_than(engine: AsyncEngine, cutoff: datetime, *, batch_size: int = 1000) -> int:
    """Delete one batch of rows created before ``cutoff``; returns how many (less than batch_size = done)."""
    async with engine.begin() as conn:
        ids = list(
            (
                await conn.execute(select(executions.c.id).where(executions.c.created_at < cutoff).limit(batch_size))
            ).scalars()
        )
        if ids:
            await conn.execute(delete(executions).where(executions.c.id.in_(ids)))
    return len(ids)


async def purge_beyond_count(engine: AsyncEngine, keep: int, *, jobs_per_batch: int = 100) -> int:
    """For up to ``jobs_per_batch`` jobs holding more than ``keep`` rows, delete all but the newest ``keep``."""
    deleted = 0
    async with engine.begin() as conn:
        over = list(
            (
                await conn.execute(
                    select(executions.c.job_id)
                    .group_by(executions.c.job_id)
                    .having(func.count() > keep)
                    .limit(jobs_per_batch)
                )
            ).scalars()
        )
        for job_id in over:
            cutoff = (
                await conn.execute(
                    select(executions.c.fire_time)
                    .where(executions.c.job_id == job_id)
                    .order_by(executions.c.fire_time.desc())
                    .limit(1)
                    .offset(keep)
                )
            ).scalar()
            if cutoff is not None:
                result = await conn.execute(
                    delete(executions).where(executions.c.job_id == job_id, executions.c.fire_time <= cutoff)
                )
                deleted += int(result.rowcount)
    return deleted
