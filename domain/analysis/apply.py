"""Writing analyses back: session fields, the two AI stages, and the questions with their links.

Everything happens in the caller's transaction, so the result commits together with the caller's fence (the
claim, or the batch bookkeeping) or not at all. Applying the same analysis again leaves the same rows:
questions are inserted ignoring conflicts and a session's links are replaced, never appended, so no
duplicate-key error can happen however often a result is applied (batch output re-read after a crash).

:func:`apply_analyses` does a whole batch of sessions in a fixed number of statements (about ten, whatever
the batch size), which is what lets the local provider analyse thousands of sessions a second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import String, bindparam, case, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.analysis.schema import SessionAnalysis
from domain.model import Stage, StageStatus
from domain.tables import messages, processing_status, questions, session_questions, sessions
from storage.inserts import insert_ignoring_conflicts
from storage.types import UTCDateTime

MAX_ERROR_CHARS = 2000
_CHUNK = 1000  # ids per IN list

_AI_STAGES = (Stage.AI_ANALYSIS.value, Stage.QUESTION_EXTRACTION.value)

_LATEST = bindparam("b_latest", type_=UTCDateTime())
_UPDATE_SESSION = (
    update(sessions)
    .where(sessions.c.id == bindparam("b_id", type_=String()))
    .values(
        language=bindparam("b_language"),
        sentiment=bindparam("b_sentiment"),
        escalated=bindparam("b_escalated"),
        forwarded_hr=bindparam("b_forwarded_hr"),
        category=bindparam("b_category"),
        summary=bindparam("b_summary"),
        messages_sent=bindparam("b_messages_sent"),
        # NULL (no timestamped message) compares as unknown, so the end time stays.
        end_time=case(
            (sessions.c.end_time < _LATEST, _LATEST),
            else_=sessions.c.end_time,
        ),
        updated_at=bindparam("b_now", type_=UTCDateTime()),
    )
)


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


async def _message_facts(conn: AsyncConnection, ids: list[str]) -> dict[str, tuple[int, datetime | None]]:
    """Per session: user messages (role compared case-insensitively) and the latest message time."""
    facts: dict[str, tuple[int, datetime | None]] = {}
    user = case((func.lower(messages.c.role) == "user", 1), else_=0)
    for chunk in _chunks(ids):
        rows = await conn.execute(
            select(messages.c.session_id, func.sum(user), func.max(messages.c.timestamp))
            .where(messages.c.session_id.in_(chunk))
            .group_by(messages.c.session_id)
        )
        for session_id, users, latest in rows:
            facts[str(session_id)] = (int(users or 0), latest)
    return facts


async def _question_ids(conn: AsyncConnection, contents: list[str], now: datetime) -> dict[str, int]:
    """Ids of the question texts, inserting the new ones. Sorted inserts: concurrent transactions then take
    the unique-index locks in the same order and cannot deadlock each other."""
    if not contents:
        return {}
    ordered = sorted(set(contents))
    await conn.execute(
        insert_ignoring_conflicts(conn, questions), [{"content": text, "created_at": now} for text in ordered]
    )
    found: dict[str, int] = {}
    for chunk in _chunks(ordered):
        rows = await conn.execute(select(questions.c.id, questions.c.content).where(questions.c.content.in_(chunk)))
        for question_id, content in rows:
            found[str(content)] = int(question_id)
    # A case- or accent-insensitive collation (MariaDB) may hold the text in another spelling: match loosely.
    loose = {content.casefold(): question_id for content, question_id in found.items()}
    return {text: found.get(text) or loose.get(text.casefold(), 0) for text in ordered}


async def apply_analyses(conn: AsyncConnection, analyses: Mapping[str, SessionAnalysis], *, now: datetime) -> None:
    """Apply each session's analysis (keyed by session id) in the caller's transaction.

    Sets language, sentiment, escalated, forwarded_hr, category, summary, ``messages_sent`` (user messages)
    and ``end_time`` (the latest message time, when later); AI_ANALYSIS and QUESTION_EXTRACTION become
    COMPLETED (their claims cleared); the questions are stored and linked in order.
    """
    ids = list(analyses)
    if not ids:
        return
    facts = await _message_facts(conn, ids)
    await conn.execute(
        _UPDATE_SESSION,
        [
            {
                "b_id": session_id,
                "b_language": a.language,
                "b_sentiment": a.sentiment.value,
                "b_escalated": a.escalated,
                "b_forwarded_hr": a.forwarded_hr,
                "b_category": a.category.value,
                "b_summary": a.summary,
                "b_messages_sent": facts.get(session_id, (0, None))[0],
                "b_latest": facts.get(session_id, (0, None))[1],
                "b_now": now,
            }
            for session_id, a in analyses.items()
        ],
    )

    question_ids = await _question_ids(conn, [q for a in analyses.values() for q in a.questions], now)
    linked: set[str] = set()
    for chunk in _chunks(ids):
        rows = await conn.execute(
            select(session_questions.c.session_id).where(session_questions.c.session_id.in_(chunk)).distinct()
        )
        linked.update(str(r[0]) for r in rows)
    if linked:  # only sessions that have links: a DELETE of nothing still takes gap locks on InnoDB
        for chunk in _chunks(sorted(linked)):
            await conn.execute(delete(session_questions).where(session_questions.c.session_id.in_(chunk)))
    links: list[dict[str, Any]] = []
    for session_id, a in analyses.items():
        seen: set[int] = set()
        for text in a.questions:
            question_id = question_ids.get(text, 0)
            if question_id and question_id not in seen:
                seen.add(question_id)
                links.append({"session_id": session_id, "position": len(seen) - 1, "question_id": question_id})
    if links:
        await conn.execute(insert(session_questions), links)

    for chunk in _chunks(ids):
        await conn.execute(
            update(processing_status)
            .where(processing_status.c.session_id.in_(chunk), processing_status.c.stage.in_(_AI_STAGES))
            .values(
                status=StageStatus.COMPLETED.value,
                started_at=func.coalesce(processing_status.c.started_at, now),
                completed_at=now,
                error_message=None,
                claimed_by=None,
                claimed_until=None,
                updated_at=now,
            )
        )


async def apply_analysis(conn: AsyncConnection, session_id: str, analysis: SessionAnalysis, *, now: datetime) -> None:
    """:func:`apply_analyses` for one session."""
    await apply_analyses(conn, {session_id: analysis}, now=now)


async def fail_analysis(conn: AsyncConnection, session_id: str, reason: str, *, now: datetime) -> None:
    """AI_ANALYSIS FAILED with ``reason`` (retry_count + 1); QUESTION_EXTRACTION SKIPPED, as it has nothing to
    extract from. Claims are cleared. A later successful analysis completes both."""
    await conn.execute(
        update(processing_status)
        .where(processing_status.c.session_id == session_id, processing_status.c.stage == Stage.AI_ANALYSIS.value)
        .values(
            status=StageStatus.FAILED.value,
            completed_at=now,
            error_message=reason[:MAX_ERROR_CHARS],
            retry_count=processing_status.c.retry_count + 1,
            claimed_by=None,
            claimed_until=None,
            updated_at=now,
        )
    )
    await conn.execute(
        update(processing_status)
        .where(
            processing_status.c.session_id == session_id,
            processing_status.c.stage == Stage.QUESTION_EXTRACTION.value,
            processing_status.c.status != StageStatus.COMPLETED.value,
        )
        .values(
            status=StageStatus.SKIPPED.value,
            completed_at=now,
            error_message="AI analysis failed",
            claimed_by=None,
            claimed_until=None,
            updated_at=now,
        )
    )


async def skip_analysis(conn: AsyncConnection, session_ids: Iterable[str], reason: str, *, now: datetime) -> None:
    """Both AI stages SKIPPED with ``reason`` (e.g. "no messages"), claims cleared: never left pending."""
    ids = list(session_ids)
    for chunk in _chunks(ids):
        await conn.execute(
            update(processing_status)
            .where(processing_status.c.session_id.in_(chunk), processing_status.c.stage.in_(_AI_STAGES))
            .values(
                status=StageStatus.SKIPPED.value,
                completed_at=now,
                error_message=reason[:MAX_ERROR_CHARS],
                claimed_by=None,
                claimed_until=None,
                updated_at=now,
            )
        )
