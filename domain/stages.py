"""Processing status per (session, stage): the five rows a session carries through the pipeline.

Every function works on a connection inside the caller's transaction, so a stage change commits together
with the work it describes (messages written, analysis applied) or not at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.model import Stage, StageStatus
from domain.tables import processing_status
from storage.inserts import insert_ignoring_conflicts

MAX_ERROR_CHARS = 2000  # long tracebacks or HTML error pages are cut, not stored whole


async def initialize(conn: AsyncConnection, session_ids: Iterable[str], *, now: datetime) -> None:
    """All five stages PENDING for each session; rows that already exist are left as they are."""
    rows = [
        {
            "id": str(uuid.uuid4()),
            "session_id": session_id,
            "stage": stage.value,
            "status": StageStatus.PENDING.value,
            "retry_count": 0,
            "created_at": now,
            "updated_at": now,
        }
        for session_id in session_ids
        for stage in Stage
    ]
    if rows:
        await conn.execute(insert_ignoring_conflicts(conn, processing_status), rows)


async def start(
    conn: AsyncConnection, session_id: str, stage: Stage, *, now: datetime, details: Mapping[str, Any] | None = None
) -> None:
    values: dict[str, Any] = {"status": StageStatus.IN_PROGRESS.value, "started_at": now, "error_message": None}
    if details is not None:
        values["details"] = dict(details)
    await _set(conn, session_id, stage, now, values)


async def complete(
    conn: AsyncConnection, session_id: str, stage: Stage, *, now: datetime, details: Mapping[str, Any] | None = None
) -> None:
    values: dict[str, Any] = {"status": StageStatus.COMPLETED.value, "completed_at": now, "error_message": None}
    if details is not None:
        values["details"] = dict(details)
    await _set(conn, session_id, stage, now, values)


async def fail(
    conn: AsyncConnection,
    session_id: str,
    stage: Stage,
    error: str,
    *,
    now: datetime,
    details: Mapping[str, Any] | None = None,
) -> None:
    """FAILED with the reason; retry_count grows by one each time."""
    values: dict[str, Any] = {
        "status": StageStatus.FAILED.value,
        "completed_at": now,
        "error_message": error[:MAX_ERROR_CHARS],
        "retry_count": processing_status.c.retry_count + 1,
    }
    if details is not None:
        values["details"] = dict(details)
    await _set(conn, session_id, stage, now, values)


async def skip(conn: AsyncConnection, session_id: str, stage: Stage, reason: str, *, now: datetime) -> None:
    values = {"status": StageStatus.SKIPPED.value, "completed_at": now, "error_message": reason[:MAX_ERROR_CHARS]}
    await _set(conn, session_id, stage, now, values)


async def reset_for_retry(conn: AsyncConnection, session_id: str, stage: Stage, *, now: datetime) -> None:
    """Back to PENDING so the stage's service picks it up again (retry_count is kept)."""
    values = {
        "status": StageStatus.PENDING.value,
        "started_at": None,
        "completed_at": None,
        "error_message": None,
        "claimed_by": None,
        "claimed_until": None,
    }
    await _set(conn, session_id, stage, now, values)


async def statuses(conn: AsyncConnection, session_id: str) -> dict[Stage, StageStatus]:
    rows = await conn.execute(
        select(processing_status.c.stage, processing_status.c.status).where(
            processing_status.c.session_id == session_id
        )
    )
    return {Stage(stage): StageStatus(status) for stage, status in rows}


async def pipeline_counts(conn: AsyncConnection) -> dict[tuple[Stage, StageStatus], int]:
    """How many sessions sit in each (stage, status): at most 25 groups, whatever the table size."""
    rows = await conn.execute(
        select(processing_status.c.stage, processing_status.c.status, func.count()).group_by(
            processing_status.c.stage, processing_status.c.status
        )
    )
    return {(Stage(stage), StageStatus(status)): int(count) for stage, status, count in rows}


async def _set(conn: AsyncConnection, session_id: str, stage: Stage, now: datetime, values: dict[str, Any]) -> None:
    await conn.execute(
        update(processing_status)
        .where(processing_status.c.session_id == session_id, processing_status.c.stage == stage.value)
        .values(updated_at=now, **values)
    )
