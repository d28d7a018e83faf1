"""batch-processing against the loopback OpenAI stub: one model per batch, results applied with questions and
50 % costs, caps, idempotent re-application, and the service's run loop (also with the key unset).

The helpers here (``seed_requests``, ``processor``, ``drive``...) are shared with test_batch_failures.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.analysis import seed
from domain.analysis.requests import record_request
from domain.batches import BatchProcessor, BatchSettings
from domain.model import BatchStatus, RequestStatus, Stage, StageStatus
from domain.openai_batch_client import BatchClient
from domain.tables import (
    ai_batch_requests,
    ai_model_pricing,
    ai_processing_requests,
    processing_status,
    questions,
    session_questions,
    sessions,
)
from services.batch_processing import OFF_REASON, BatchProcessingConfig, BatchProcessingService
from services.clock import FakeClock, SystemClock
from services.runs import RunStatus, RunStore
from storage.engine import create_engine
from storage.migrate import upgrade
from tests.support.openai_server import OpenAIStub

pytestmark = pytest.mark.anyio

NOW = datetime(2030, 1, 1, tzinfo=UTC)
PRICES = {"gpt-4o": (2.5, 10.0), "gpt-4o-mini": (0.15, 0.6)}  # USD per million tokens
RATE = 0.85


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgresql)])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[AsyncEngine]:
    """SQLite and PostgreSQL: the flow's transactions and claims on a file database and a locking server."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    await upgrade(url)
    eng = create_engine(url)
    async with eng.begin() as conn:
        for model, (prompt, completion) in PRICES.items():
            await conn.execute(
                insert(ai_model_pricing).values(
                    model=model,
                    prompt_usd_per_million=prompt,
                    completion_usd_per_million=completion,
                    effective_from=datetime(2025, 1, 1, tzinfo=UTC),
                )
            )
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
async def api() -> AsyncIterator[OpenAIStub]:
    async with OpenAIStub(answer_model=None) as stub:  # answers name the requested model
        yield stub


_OPEN: list[BatchClient] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    """Clients made by `processor()` are closed while the test's event loop still runs."""
    yield
    while _OPEN:
        await _OPEN.pop().close()


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_MAX_RETRIES", "AI_USD_TO_EUR_RATE"):
        monkeypatch.delenv(name, raising=False)


async def seed_requests(engine: AsyncEngine, count: int, *, model: str) -> dict[str, str]:
    """``count`` sessions with messages, AI_ANALYSIS IN_PROGRESS and one PENDING_BATCHING request each, as
    session-processing's batch mode leaves them; returns request id -> session id."""
    session_ids = await seed(engine, count, now=NOW - timedelta(hours=1), default_model=model)
    requests: dict[str, str] = {}
    async with engine.begin() as conn:
        for session_id in session_ids:
            request_id = await record_request(
                conn,
                session_id=session_id,
                model=model,
                status=RequestStatus.PENDING_BATCHING,
                usage=None,
                price=None,
                usd_to_eur=RATE,
                openai=None,
                success=False,
                error=None,
                now=NOW - timedelta(minutes=30),
            )
            requests[request_id] = session_id
        await conn.execute(
            update(processing_status)
            .where(processing_status.c.session_id.in_(session_ids), processing_status.c.stage == Stage.AI_ANALYSIS)
            .values(status=StageStatus.IN_PROGRESS.value)
        )
    return requests


def processor(
    engine: AsyncEngine, api: OpenAIStub, clock: FakeClock, *, retries: int = 0, **settings: Any
) -> BatchProcessor:
    client = BatchClient(api_key=api.api_key, base_url=api.base_url, timeout=10, max_retries=retries)
    _OPEN.append(client)
    return BatchProcessor(
        engine,
        client,
        owner=f"node-a:{clock.now().isoformat()}",
        settings=BatchSettings(usd_to_eur=RATE, **settings),
        now=clock.now,
    )


async def drive(engine: AsyncEngine, api: OpenAIStub, clock: FakeClock, *, polls: int = 6, **settings: Any) -> None:
    """One create and then polls until nothing is in flight (the stub moves one step per poll)."""
    work = processor(engine, api, clock, **settings)
    await work.recover()
    await work.create()
    for _ in range(polls):
        await work.poll()
        if not await work.in_flight():
            return
    raise AssertionError("batches still in flight after the polls")


async def rows(engine: AsyncEngine, table: Any, *where: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(select(table).where(*where))]


async def stage(engine: AsyncEngine, session_id: str, which: Stage) -> tuple[str, str | None]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(processing_status.c.status, processing_status.c.error_message).where(
                    processing_status.c.session_id == session_id, processing_status.c.stage == which.value
                )
            )
        ).one()
    return str(row[0]), row[1]


async def count(engine: AsyncEngine, table: Any, *where: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one())


# ------------------------------------------------------------------------------------------------ happy path


async def test_two_models_make_two_batches_whose_results_are_applied_with_half_price(
    engine: AsyncEngine, api: OpenAIStub
) -> None:
    big = await seed_requests(engine, 3, model="gpt-4o")
    mini = await seed_requests(engine, 2, model="gpt-4o-mini")
    clock = FakeClock()
    await drive(engine, api, clock)

    # one batch per model, each file naming one model, with the json_object response format
    assert len(api.batches) == 2
    assert sorted(tuple(api.batch_models(b)) for b in api.batches) == [("gpt-4o",), ("gpt-4o-mini",)]
    for batch_id in api.batches:
        for line in api.input_lines(batch_id):
            assert line["body"]["response_format"] == {"type": "json_object"}
            assert line["url"] == "/v1/chat/completions" and line["method"] == "POST"
    assert {b.completion_window for b in api.batches.values()} == {"24h"}
    local = await rows(engine, ai_batch_requests)
    assert {r["status"] for r in local} == {BatchStatus.PROCESSED.value}
    by_remote = {r["openai_batch_id"]: r for r in local}
    for remote in api.batches.values():
        assert remote.metadata == {"local_batch_id": by_remote[remote.id]["id"]}
        lines = api.files[remote.input_file_id].lines()
        assert {line["custom_id"] for line in lines} == {
            r["id"]
            for r in await rows(
                engine, ai_processing_requests, ai_processing_requests.c.batch_id == by_remote[remote.id]["id"]
            )
        }

    for request_id, session_id in {**big, **mini}.items():
        [request] = await rows(engine, ai_processing_requests, ai_processing_requests.c.id == request_id)
        assert request["processing_status"] == RequestStatus.PROCESSING_COMPLETE.value and request["success"]
        assert request["attempts"] == 1 and request["prompt_tokens"] > 0 and request["completion_tokens"] > 0
        prompt_price, completion_price = PRICES[request["model"]]
        full = (request["prompt_tokens"] * prompt_price + request["completion_tokens"] * completion_price) / 1e6
        assert request["total_cost_usd"] == pytest.approx(full * 0.5)
        assert request["total_cost_eur"] == pytest.approx(full * 0.5 * RATE)
        assert request["prompt_token_cost"] == pytest.approx(prompt_price / 1e6 * 0.5)
        assert request["openai_request_id"] and request["completed_at"] is not None
        assert request["model"] == ("gpt-4o" if request_id in big else "gpt-4o-mini")
        assert await stage(engine, session_id, Stage.AI_ANALYSIS) == (StageStatus.COMPLETED.value, None)
        assert (await stage(engine, session_id, Stage.QUESTION_EXTRACTION))[0] == StageStatus.COMPLETED.value
        [session] = await rows(engine, sessions, sessions.c.id == session_id)
        assert session["summary"] and session["language"] == "en" and session["sentiment"] == "NEUTRAL"
        assert session["messages_sent"] == 2  # "USER" and "user": counted case-insensitively
        assert session["end_time"] == NOW - timedelta(hours=2) + timedelta(minutes=9)  # the latest message
    # every session's user questions were extracted and linked in order
    links = await count(engine, session_questions)
    assert links >= 5 and await count(engine, questions) >= 1


async def test_requests_are_cut_by_count_and_by_bytes(engine: AsyncEngine, api: OpenAIStub) -> None:
    await seed_requests(engine, 5, model="gpt-4o")
    await drive(engine, api, FakeClock(), max_requests=2)
    assert sorted(len(api.input_lines(b)) for b in api.batches) == [1, 2, 2]

    await seed_requests(engine, 3, model="gpt-4o")
    before = set(api.batches)
    line_size = len(json.dumps(api.input_lines(next(iter(before)))[0]))
    await drive(engine, api, FakeClock(NOW + timedelta(hours=1)), max_bytes=int(line_size * 1.5))
    new = set(api.batches) - before
    assert sorted(len(api.input_lines(b)) for b in new) == [1, 1, 1]  # one line fits, two do not
    assert (
        await count(engine, ai_processing_requests, ai_processing_requests.c.processing_status != "PROCESSING_COMPLETE")
        == 0
    )


async def test_a_request_too_big_for_any_batch_fails_alone(engine: AsyncEngine, api: OpenAIStub) -> None:
    requests = await seed_requests(engine, 2, model="gpt-4o")
    await drive(engine, api, FakeClock(), max_bytes=1024)  # every transcript line is larger than 1 KiB
    assert api.batches == {}
    for request_id, session_id in requests.items():
        [request] = await rows(engine, ai_processing_requests, ai_processing_requests.c.id == request_id)
        assert request["processing_status"] == RequestStatus.PROCESSING_FAILED.value
        assert "above the batch input cap of 1024" in request["error_message"]
        assert (await stage(engine, session_id, Stage.AI_ANALYSIS))[0] == StageStatus.FAILED.value


async def test_results_applied_twice_leave_the_same_rows(engine: AsyncEngine, api: OpenAIStub) -> None:
    await seed_requests(engine, 3, model="gpt-4o")
    clock = FakeClock()
    await drive(engine, api, clock)
    snapshot = (
        await rows(engine, ai_processing_requests),
        await rows(engine, session_questions),
        await rows(engine, questions),
        await rows(engine, sessions),
    )
    # as if the run died after applying but before closing the batch: the next poll reads the files again
    async with engine.begin() as conn:
        await conn.execute(update(ai_batch_requests).values(status=BatchStatus.COMPLETED.value))
    work = processor(engine, api, clock)
    assert await work.poll() == 1
    assert work.report.applied == 0 and work.report.released == 0
    assert (
        await rows(engine, ai_processing_requests),
        await rows(engine, session_questions),
        await rows(engine, questions),
        await rows(engine, sessions),
    ) == snapshot
    assert {r["status"] for r in await rows(engine, ai_batch_requests)} == {BatchStatus.PROCESSED.value}


# ------------------------------------------------------------------------------------------------ the service


def _service(engine: AsyncEngine, clock: Any, **config: Any) -> BatchProcessingService:
    return BatchProcessingService(
        "batch-processing", BatchProcessingConfig(**config), store=RunStore(engine, "node-a"), clock=clock
    )


async def test_one_service_run_polls_until_its_batches_are_applied(
    engine: AsyncEngine, api: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", api.api_key)
    monkeypatch.setenv("OPENAI_BASE_URL", api.base_url)
    monkeypatch.setenv("OPENAI_MAX_RETRIES", "0")
    requests = await seed_requests(engine, 4, model="gpt-4o")
    service = _service(engine, SystemClock(), check_interval="50ms", poll_window="20s", timeout="30s")
    assert await service.run_now() is RunStatus.SUCCEEDED
    assert await count(
        engine, ai_processing_requests, ai_processing_requests.c.processing_status == "PROCESSING_COMPLETE"
    ) == len(requests)
    [batch] = api.batches.values()
    assert batch.polls == 3  # validating -> in_progress -> finalizing -> completed, then the run ended
    (run,), _ = await service.store.list_runs("batch-processing", limit=5, offset=0)
    assert run.items_processed == len(requests)


async def test_without_an_api_key_the_service_is_a_logged_no_op(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    await seed_requests(engine, 2, model="gpt-4o")
    service = _service(engine, FakeClock())
    with caplog.at_level(logging.INFO):
        assert await service.run_now() is RunStatus.SUCCEEDED
    assert any(OFF_REASON in r.getMessage() and "2 request(s) are waiting" in r.getMessage() for r in caplog.records)
    assert (
        await count(engine, ai_processing_requests, ai_processing_requests.c.processing_status == "PENDING_BATCHING")
        == 2
    )


async def test_the_poll_window_must_fit_in_the_timeout() -> None:
    with pytest.raises(ValueError, match="poll_window"):
        BatchProcessingConfig(poll_window=timedelta(minutes=10), timeout=timedelta(minutes=5))
    assert BatchProcessingConfig().check_interval == timedelta(minutes=2)
