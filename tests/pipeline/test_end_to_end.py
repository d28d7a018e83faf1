"""The whole pipeline on SQLite and PostgreSQL: the bundled demo feeds served over loopback HTTP with Basic auth
→ imports → sessions and messages → analysed sessions with questions, through the local provider, direct
OpenAI calls and the Batch API (both against the loopback OpenAI server).

Each service runs once, in pipeline order, through its public run path (`run_now`: a claimed run record,
items counted), and the assertions read the database the way an operator would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.companies import CompanySpec, upsert_companies
from domain.csvfeed import parse_feed
from domain.model import RequestStatus, Stage, StageStatus
from domain.tables import (
    ai_batch_requests,
    ai_processing_requests,
    import_rejections,
    messages,
    processing_status,
    session_imports,
    session_questions,
    sessions,
)
from services.base import BaseSchedulerService
from services.batch_processing import BatchProcessingConfig, BatchProcessingService
from services.csv_import import CsvImportConfig, CsvImportService
from services.import_processing import ImportProcessingConfig, ImportProcessingService
from services.runs import RunStatus, RunStore
from services.session_processing import SessionProcessingConfig, SessionProcessingService
from storage.engine import create_engine
from storage.migrate import upgrade
from tests.support.feed_server import FeedServer
from tests.support.openai_server import OpenAIStub

pytestmark = pytest.mark.anyio

DEMO_FEEDS = Path(__file__).resolve().parents[2] / "demo" / "feeds"
ZONES = {
    "amstel-retail": "Europe/Amsterdam",
    "spree-logistik": "Europe/Berlin",
    "hudson-hospitality": "America/New_York",
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgresql)])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[AsyncEngine]:
    url: str = request.getfixturevalue(f"{request.param}_url")
    await upgrade(url)
    eng = create_engine(url)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def feeds(monkeypatch: pytest.MonkeyPatch) -> Iterator[FeedServer]:
    """The demo feeds and transcripts over HTTP, every path behind Basic auth."""
    server = FeedServer(username="livedash", password="s3cret-feed-pass")
    server.add_tree(DEMO_FEEDS)
    monkeypatch.setenv("E2E_FEED_PASSWORD", server.password)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "AI_USD_TO_EUR_RATE"):
        monkeypatch.delenv(name, raising=False)
    with server:
        yield server


@pytest.fixture
async def openai_api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OpenAIStub]:
    async with OpenAIStub(api_key="sk-e2e-test-key") as api:
        monkeypatch.setenv("OPENAI_API_KEY", api.api_key)
        monkeypatch.setenv("OPENAI_BASE_URL", api.base_url)
        monkeypatch.setenv("OPENAI_MAX_RETRIES", "0")
        yield api


async def _companies(engine: AsyncEngine, server: FeedServer, slugs: list[str]) -> None:
    specs = [
        CompanySpec(
            name=slug,
            csv_url=server.url(f"/{slug}/sessions.csv"),
            csv_username=server.username,
            csv_password_ref="env:E2E_FEED_PASSWORD",
            timezone=ZONES[slug],
        )
        for slug in slugs
    ]
    await upsert_companies(engine, specs, datetime.now(UTC))


async def _run(service: BaseSchedulerService) -> int:
    """One run through the service's run path; returns the items it counted."""
    assert await service.run_now() is RunStatus.SUCCEEDED
    (run, *_), _ = await service.store.list_runs(service.name, limit=1, offset=0)
    assert run.status == RunStatus.SUCCEEDED.value
    return run.items_processed


async def _count(engine: AsyncEngine, table: Table, *where: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one())


async def _stage_counts(engine: AsyncEngine, stage: Stage) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(processing_status.c.status, func.count())
            .where(processing_status.c.stage == stage.value)
            .group_by(processing_status.c.status)
        )
        return {status: int(count) for status, count in rows}


async def _import_and_build_sessions(engine: AsyncEngine, server: FeedServer, slugs: list[str]) -> int:
    """csv-import and import-processing; returns how many sessions have messages."""
    await _companies(engine, server, slugs)
    store = RunStore(engine, "e2e-node")
    good = rejected = 0
    for slug in slugs:
        parsed = parse_feed(server.files[f"/{slug}/sessions.csv"].decode())
        good, rejected = good + len(parsed.rows), rejected + len(parsed.rejections)

    imported = await _run(CsvImportService("csv-import", CsvImportConfig(), store=store))
    assert imported == good
    assert await _count(engine, session_imports) == good
    assert await _count(engine, import_rejections) == rejected  # every bad line recorded, every good one landed

    built = await _run(ImportProcessingService("import-processing", ImportProcessingConfig(), store=store))
    assert built == good
    assert await _count(engine, sessions) == good
    assert await _count(engine, session_imports, session_imports.c.error.is_not(None)) == 0
    # Every transcript came over HTTP with the company's credentials (the server answers 401 otherwise).
    transcript_hits = [auth for path, auth in server.requests if "/transcripts/" in path]
    assert transcript_hits and all(auth and auth.startswith("Basic ") for auth in transcript_hits)
    fetch = await _stage_counts(engine, Stage.TRANSCRIPT_FETCH)
    assert fetch.get(StageStatus.FAILED.value, 0) == 0
    async with engine.connect() as conn:
        with_messages = int((await conn.execute(select(func.count(func.distinct(messages.c.session_id))))).scalar_one())
    assert with_messages == fetch[StageStatus.COMPLETED.value]  # sessions without a transcript URL: SKIPPED
    assert fetch.get(StageStatus.SKIPPED.value, 0) == good - with_messages
    return with_messages


async def _assert_analysed(engine: AsyncEngine, with_messages: int) -> None:
    total = await _count(engine, sessions)
    analysis = await _stage_counts(engine, Stage.AI_ANALYSIS)
    assert analysis == {StageStatus.COMPLETED.value: with_messages, StageStatus.SKIPPED.value: total - with_messages}
    extraction = await _stage_counts(engine, Stage.QUESTION_EXTRACTION)
    assert extraction.get(StageStatus.COMPLETED.value, 0) == with_messages
    assert await _count(engine, sessions, sessions.c.category.is_not(None), sessions.c.summary.is_not(None)) == (
        with_messages
    )
    assert await _count(engine, session_questions) >= with_messages // 2  # most chats ask something


async def test_local_provider_end_to_end(engine: AsyncEngine, feeds: FeedServer) -> None:
    slugs = list(ZONES)
    with_messages = await _import_and_build_sessions(engine, feeds, slugs)
    store = RunStore(engine, "e2e-node")
    analysed = await _run(
        SessionProcessingService("session-processing", SessionProcessingConfig(batch_size=0), store=store)
    )
    assert analysed >= with_messages
    await _assert_analysed(engine, with_messages)
    async with engine.connect() as conn:
        languages = set((await conn.execute(select(sessions.c.language).distinct())).scalars())
    assert {"nl", "de", "en"} <= languages  # the demo's Dutch, German and English chats told apart offline


async def test_direct_openai_end_to_end(engine: AsyncEngine, feeds: FeedServer, openai_api: OpenAIStub) -> None:
    with_messages = await _import_and_build_sessions(engine, feeds, ["amstel-retail"])
    store = RunStore(engine, "e2e-node")
    config = SessionProcessingConfig(batch_size=0, provider="openai", mode="direct")
    await _run(SessionProcessingService("session-processing", config, store=store))
    await _assert_analysed(engine, with_messages)
    paid = await _count(
        engine,
        ai_processing_requests,
        ai_processing_requests.c.success.is_(True),
        ai_processing_requests.c.total_cost_eur > 0,
    )
    assert paid == with_messages  # one priced call per analysed session


async def test_batch_api_end_to_end(engine: AsyncEngine, feeds: FeedServer, openai_api: OpenAIStub) -> None:
    with_messages = await _import_and_build_sessions(engine, feeds, ["spree-logistik"])
    store = RunStore(engine, "e2e-node")
    enqueue = SessionProcessingConfig(batch_size=0, mode="batch")
    await _run(SessionProcessingService("session-processing", enqueue, store=store))
    pending = RequestStatus.PENDING_BATCHING.value
    assert await _count(engine, ai_processing_requests, ai_processing_requests.c.processing_status == pending) == (
        with_messages
    )
    batch = BatchProcessingConfig(
        check_interval=timedelta(milliseconds=50), poll_window=timedelta(seconds=30), timeout=timedelta(seconds=60)
    )
    applied = await _run(BatchProcessingService("batch-processing", batch, store=store))
    assert applied == with_messages
    await _assert_analysed(engine, with_messages)
    complete = RequestStatus.PROCESSING_COMPLETE.value
    assert (
        await _count(
            engine,
            ai_processing_requests,
            ai_processing_requests.c.processing_status == complete,
            ai_processing_requests.c.total_cost_eur > 0,
        )
        == with_messages
    )
    assert await _count(engine, ai_batch_requests, ai_batch_requests.c.status == "PROCESSED") == 1
