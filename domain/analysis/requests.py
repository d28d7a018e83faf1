"""The ``ai_processing_requests`` row: one AI call's cost record, or (PENDING_BATCHING) a Batch API work item."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.analysis.costs import Price, Usage, cost_of
from domain.model import PROCESSING_TYPE, RequestStatus
from domain.tables import ai_processing_requests

MAX_ERROR_CHARS = 2000


def _text(data: Mapping[str, Any] | None, key: str, limit: int) -> str | None:
    value = data.get(key) if isinstance(data, Mapping) else None
    return str(value)[:limit] if value is not None else None


async def record_request(
    conn: AsyncConnection,
    *,
    session_id: str,
    model: str,
    status: RequestStatus,
    usage: Usage | None,
    price: Price | None,
    usd_to_eur: float,
    discount: float = 0.0,
    openai: Mapping[str, Any] | None,
    success: bool,
    error: str | None,
    now: datetime,
) -> str:
    """Insert the row in the caller's transaction; returns its id.

    ``openai`` is the API's response (or batch output line body): its ``id``, ``service_tier`` and
    ``system_fingerprint`` are kept. ``error`` must already be free of secrets; it is cut to 2000 characters.
    A terminal status (complete, failed) stamps ``completed_at``.
    """
    usage = usage or Usage()
    usd, eur = cost_of(usage, price, usd_to_eur=usd_to_eur, discount=discount) if price else (0.0, 0.0)
    request_id = str(uuid.uuid4())
    terminal = status in (RequestStatus.PROCESSING_COMPLETE, RequestStatus.PROCESSING_FAILED)
    await conn.execute(
        insert(ai_processing_requests).values(
            id=request_id,
            session_id=session_id,
            model=model[:100],
            processing_type=PROCESSING_TYPE,
            processing_status=status.value,
            attempts=0,
            openai_request_id=_text(openai, "id", 255),
            service_tier=_text(openai, "service_tier", 50),
            system_fingerprint=_text(openai, "system_fingerprint", 100),
            **usage.columns(),
            prompt_token_cost=price.prompt_usd_per_token if price else 0.0,
            completion_token_cost=price.completion_usd_per_token if price else 0.0,
            total_cost_usd=usd,
            total_cost_eur=eur,
            success=success,
            error_message=error[:MAX_ERROR_CHARS] if error else None,
            requested_at=now,
            completed_at=now if terminal else None,
        )
    )
    return request_id


async def record_free(conn: AsyncConnection, session_ids: list[str], *, model: str, now: datetime) -> None:
    """One successful zero-cost row per session in one statement: the local provider's record, so every
    analysis leaves the same audit trail (and exactly-once can be counted) whatever the provider."""
    if not session_ids:
        return
    await conn.execute(
        insert(ai_processing_requests),
        [
            {
                "id": str(uuid.uuid4()),
                "session_id": session_id,
                "model": model,
                "processing_type": PROCESSING_TYPE,
                "processing_status": RequestStatus.PROCESSING_COMPLETE.value,
                "attempts": 0,
                **Usage().columns(),
                "prompt_token_cost": 0.0,
                "completion_token_cost": 0.0,
                "total_cost_usd": 0.0,
                "total_cost_eur": 0.0,
                "success": True,
                "requested_at": now,
                "completed_at": now,
            }
            for session_id in session_ids
        ],
    )
