"""session-processing on real databases: local analysis, batch enqueueing, skipping, fencing, reaping, and the
OpenAI provider against a loopback chat-completions server (valid, malformed and failing answers, costs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.analysis import seed
from domain.analysis.apply import apply_analysis
from domain.analysis.openai_direct import OnCall, OpenAIAnalyzer, Verdict
from domain.analysis.prompt import Transcript
from domain.analysis.schema import SessionAnalysis
from domain.analysis.settings import OpenAISettings
from domain.model import Category, CompanyStatus, RequestStatus, Sentiment, Stage
from domain.tables import ai_processing_requests, processing_status, questions, session_questions, sessions
from services.clock import FakeClock
from services.runs import RunStatus, RunStore
from services.session_processing import (
    CLAIM,
    SessionProcessing,
    SessionProcessingConfig,
    SessionProcessingService,
)
from storage.claims import claim_batch
from storage.engine import create_engine
from storage.migrate import upgrade
from tests.support.openai_server import HTTPFault, OpenAIStub, default_analysis

pytestmark = pytest.mark.anyio

NOW = datetime(2030, 1, 1, tzinfo=UTC)  # FakeClock's default start


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_TIMEOUT", "AI_USD_TO_EUR_RATE"):
        monkeypatch.delenv(name, raising=False)


def service(engine: AsyncEngine, **config: Any) -> SessionProcessingService:
    return SessionProcessingService(
        "session-processing", SessionProcessingConfig(**config), store=RunStore(engine, "node-a"), clock=FakeClock()
    )


async def stage_of(engine: AsyncEngine, stage: Stage) -> dict[str, tuple[str, str | None]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(processing_status.c.session_id, processing_status.c.status, processing_status.c.error_message).where(
                processing_status.c.stage == stage.value
            )
        )
        return {str(s): (str(status), error) for s, status, error in rows}


async def count(engine: AsyncEngine, table: Any, *where: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one())


# ------------------------------------------------------------------------------------------------ local provider


async def test_local_provider_analyses_skips_and_leaves_other_companies(engine: AsyncEngine) -> None:
    ids = await seed(engine, 20, now=NOW, empty_every=5)  # sessions 0, 5, 10, 15 have no messages
    suspended = await seed(engine, 3, now=NOW, company_status=CompanyStatus.SUSPENDED)
    svc = service(engine, batch_size=0)
    assert await svc.run_now() is RunStatus.SUCCEEDED

    ai = await stage_of(engine, Stage.AI_ANALYSIS)
    qe = await stage_of(engine, Stage.QUESTION_EXTRACTION)
    empty = {ids[n] for n in (0, 5, 10, 15)}
    for session_id in ids:
        if session_id in empty:
            assert ai[session_id] == ("SKIPPED", "no messages") and qe[session_id] == ("SKIPPED", "no messages")
        else:
            assert ai[session_id] == ("COMPLETED", None) and qe[session_id] == ("COMPLETED", None)
    assert all(ai[s] == ("PENDING", None) for s in suspended)

    async with engine.connect() as conn:
        german = (await conn.execute(select(sessions).where(sessions.c.id == ids[1]))).one()
        links = (
            await conn.execute(
                select(session_questions.c.position, questions.c.content)
                .join(questions, questions.c.id == session_questions.c.question_id)
                .where(session_questions.c.session_id == ids[2])
                .order_by(session_questions.c.position)
            )
        ).all()
        untouched = (await conn.execute(select(sessions.c.language).where(sessions.c.id == ids[0]))).scalar_one()
    assert (german.language, german.category, german.sentiment) == ("de", "SICK_LEAVE_RECOVERY", "NEGATIVE")
    assert german.escalated is True and german.forwarded_hr is True and german.summary.startswith("German chat")
    assert german.messages_sent == 2  # "USER" and "user" both count
    assert german.end_time == NOW - timedelta(hours=1) + timedelta(minutes=9)  # the last message, later than end
    assert [tuple(r) for r in links] == [
        (0, "Hoi, wanneer wordt mijn salaris uitbetaald #2?"),
        (1, "En waar kan ik mijn loonstrook vinden #2?"),
    ]
    assert untouched is None
    assert await count(engine, ai_processing_requests, ai_processing_requests.c.model == "local") == 16
    (run,), _ = await svc.store.list_runs("session-processing", limit=5, offset=0)
    assert run.items_processed == 20


async def test_batch_size_caps_a_run_and_zero_drains_the_backlog(sqlite_url: str) -> None:
    await upgrade(sqlite_url)
    engine = create_engine(sqlite_url)
    try:
        await seed(engine, 120, now=NOW)
        assert await service(engine, batch_size=50).run_now() is RunStatus.SUCCEEDED
        done = await count(
            engine,
            processing_status,
            processing_status.c.status == "COMPLETED",
            processing_status.c.stage == "AI_ANALYSIS",
        )
        assert done == 50
        run = SessionProcessing(
            engine, owner="o2", config=SessionProcessingConfig(batch_size=0), now=lambda: NOW, chunk=7
        )
        report = await run.run()
        assert report.analysed == 70 and report.batches == 10 + 1 - 1  # 7 x 10 = 70, then an empty claim
    finally:
        await engine.dispose()


async def test_claims_held_by_another_owner_are_left_alone_and_expired_ones_reaped(engine: AsyncEngine) -> None:
    ids = await seed(engine, 10, now=NOW)
    pending = and_ai_pending()
    held = await claim_batch(engine, CLAIM, owner="other-run", limit=3, lease_seconds=300, where=pending)
    # a crashed direct-mode replica: IN_PROGRESS with a lapsed claim, once with attempts left, once without
    async with engine.begin() as conn:
        for session_id, retries in ((ids[8], 0), (ids[9], 2)):
            await conn.execute(
                update(processing_status)
                .where(processing_status.c.session_id == session_id, processing_status.c.stage == "AI_ANALYSIS")
                .values(
                    status="IN_PROGRESS",
                    claimed_by="dead-node:run",
                    retry_count=retries,
                    claimed_until=datetime(2020, 1, 1, tzinfo=UTC),
                )
            )
    report = await SessionProcessing(
        engine, owner="me:run", config=SessionProcessingConfig(batch_size=0, max_attempts=3), now=lambda: NOW
    ).run()
    ai = await stage_of(engine, Stage.AI_ANALYSIS)
    async with engine.connect() as conn:
        owners = dict(
            (
                await conn.execute(
                    select(processing_status.c.id, processing_status.c.claimed_by).where(
                        processing_status.c.id.in_(held)
                    )
                )
            ).all()
        )
    assert set(owners.values()) == {"other-run"}
    assert sum(1 for s in ids if ai[s][0] == "PENDING") == 3
    assert ai[ids[8]] == ("COMPLETED", None)
    assert ai[ids[9]][0] == "FAILED" and "abandoned" in (ai[ids[9]][1] or "")
    assert (report.analysed, report.reaped, report.failed) == (6, 1, 1)


def and_ai_pending() -> Any:
    return (processing_status.c.stage == "AI_ANALYSIS") & (processing_status.c.status == "PENDING")


async def test_applying_the_same_analysis_twice_leaves_the_same_rows(sqlite_url: str) -> None:
    await upgrade(sqlite_url)
    engine = create_engine(sqlite_url)
    try:
        (session_id,) = await seed(engine, 1, now=NOW)
        analysis = SessionAnalysis(
            language="en",
            sentiment=Sentiment.NEUTRAL,
            escalated=False,
            forwarded_hr=False,
            category=Category.ONBOARDING,
            questions=["When do I start?", "Where do I go?"],
            summary="Questions about the first day.",
            session_id=session_id,
        )
        snapshots = []
        for _ in range(2):
            async with engine.begin() as conn:
                await apply_analysis(conn, session_id, analysis, now=NOW)
            async with engine.connect() as conn:
                links = (await conn.execute(select(session_questions).order_by(session_questions.c.position))).all()
                qs = (await conn.execute(select(questions.c.id, questions.c.content).order_by(questions.c.id))).all()
                row = (await conn.execute(select(sessions.c.category, sessions.c.messages_sent))).one()
            snapshots.append((links, qs, row))
        assert snapshots[0] == snapshots[1]
        assert [q for _, q in snapshots[0][1]] == ["When do I start?", "Where do I go?"]
        assert snapshots[0][2] == ("ONBOARDING", 2)
    finally:
        await engine.dispose()


# ------------------------------------------------------------------------------------------------ batch mode


async def test_batch_mode_enqueues_once_with_the_company_model(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_MODEL", "gpt-4-turbo")
    with_model = await seed(engine, 4, now=NOW, default_model="gpt-4o-mini", empty_every=4)  # #0 is empty
    without = await seed(engine, 2, now=NOW)
    svc = service(engine, batch_size=0, mode="batch")
    assert await svc.run_now() is RunStatus.SUCCEEDED
    async with engine.connect() as conn:
        rows = (await conn.execute(select(ai_processing_requests))).all()
        claims = (
            (
                await conn.execute(
                    select(processing_status.c.claimed_by).where(processing_status.c.stage == "AI_ANALYSIS")
                )
            )
            .scalars()
            .all()
        )
    models = {r.session_id: r.model for r in rows}
    assert models == {**dict.fromkeys(with_model[1:], "gpt-4o-mini"), **dict.fromkeys(without, "gpt-4-turbo")}
    assert {r.processing_status for r in rows} == {RequestStatus.PENDING_BATCHING.value}
    assert not any(r.success for r in rows) and set(claims) == {None}
    ai = await stage_of(engine, Stage.AI_ANALYSIS)
    assert ai[with_model[0]] == ("SKIPPED", "no messages")
    assert {ai[s][0] for s in [*with_model[1:], *without]} == {"IN_PROGRESS"}
    # nothing left pending: a second run enqueues nothing, and a re-queued session is not enqueued twice
    assert isinstance(svc.clock, FakeClock)
    svc.clock.advance(60)
    assert await svc.run_now() is RunStatus.SUCCEEDED
    async with engine.begin() as conn:
        await conn.execute(
            update(processing_status)
            .where(processing_status.c.session_id == without[0], processing_status.c.stage == "AI_ANALYSIS")
            .values(status="PENDING")
        )
    svc.clock.advance(60)
    assert await svc.run_now() is RunStatus.SUCCEEDED
    assert await count(engine, ai_processing_requests) == 5


async def test_openai_provider_needs_a_key() -> None:
    with pytest.raises(ValidationError, match="OPENAI_API_KEY"):
        SessionProcessingConfig(provider="openai")
    SessionProcessingConfig(provider="openai", mode="batch")  # enqueueing needs no key


# ------------------------------------------------------------------------------------------------ openai direct
# Against tests/support/openai_server.py: a loopback OpenAI-compatible server (uvicorn in a thread).


@pytest.fixture
async def stub(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OpenAIStub]:
    async with OpenAIStub(api_key="sk-test-secret-key") as api:
        monkeypatch.setenv("OPENAI_API_KEY", api.api_key)
        monkeypatch.setenv("OPENAI_BASE_URL", api.base_url)
        monkeypatch.setenv("OPENAI_MAX_RETRIES", "0")
        monkeypatch.setenv("OPENAI_TIMEOUT", "10s")
        monkeypatch.setenv("AI_USD_TO_EUR_RATE", "0.9")
        yield api


async def test_openai_direct_valid_answer_with_costs(engine: AsyncEngine, stub: OpenAIStub) -> None:
    (session_id,) = await seed(engine, 1, now=NOW, default_model="gpt-4o")
    assert await service(engine, batch_size=0, provider="openai").run_now() is RunStatus.SUCCEEDED
    assert (await stage_of(engine, Stage.AI_ANALYSIS))[session_id] == ("COMPLETED", None)
    assert (await stage_of(engine, Stage.QUESTION_EXTRACTION))[session_id] == ("COMPLETED", None)
    (call,) = stub.calls("POST", "/v1/chat/completions")
    body = call.json
    assert body["model"] == "gpt-4o" and body["response_format"] == {"type": "json_object"}
    assert body["temperature"] == 0.3 and call.headers.get("authorization") == "Bearer sk-test-secret-key"
    transcript = body["messages"][1]["content"]  # ISO-8601 UTC times, messages in order, roles lower case
    assert "[2029-12-31T23:00:00Z] user: Hi, how many vacation days" in transcript
    assert transcript.index("23:03:00Z] assistant:") < transcript.index("23:06:00Z] user:")
    async with engine.connect() as conn:
        (row,) = (await conn.execute(select(ai_processing_requests))).all()
        stored = (await conn.execute(select(sessions.c.category, sessions.c.messages_sent))).one()
        linked = (await conn.execute(select(func.count()).select_from(session_questions))).scalar_one()
    assert tuple(stored) == ("SCHEDULE_HOURS", 2) and linked == 2  # the stub's analysis: the user's two questions
    assert (row.model, row.success, row.processing_status) == ("gpt-4o-2024-08-06", True, "PROCESSING_COMPLETE")
    assert row.prompt_tokens > 0 and row.completion_tokens > 0
    assert row.total_tokens == row.prompt_tokens + row.completion_tokens
    assert row.openai_request_id.startswith("chatcmpl") and row.system_fingerprint == "fp_stub"
    # gpt-4o's seeded prices (2.50 / 10 USD per million tokens), found through the dated model name's prefix
    assert row.prompt_token_cost == pytest.approx(2.5e-6) and row.completion_token_cost == pytest.approx(10e-6)
    usd = row.prompt_tokens * 2.5e-6 + row.completion_tokens * 10e-6
    assert row.total_cost_usd == pytest.approx(usd) and row.total_cost_eur == pytest.approx(usd * 0.9)


async def test_openai_direct_malformed_answers_are_retried_then_failed(
    sqlite_url: str, stub: OpenAIStub, caplog: pytest.LogCaptureFixture
) -> None:
    await upgrade(sqlite_url)
    engine = create_engine(sqlite_url)
    try:
        first, second = await seed(engine, 2, now=NOW)
        answers: list[Any] = ["not json at all", {**default_analysis_for(first), "category": "HOLIDAYS"}, "{}"]
        stub.responder = lambda body: answers.pop(0)
        report = await SessionProcessing(
            engine,
            owner="o:1",
            now=lambda: NOW,
            config=SessionProcessingConfig(batch_size=1, provider="openai", invalid_output_retries=2),
        ).run()
        assert report.failed == 1 and report.calls == 3 and len(stub.calls("POST", "/v1/chat/completions")) == 3
        status, reason = (await stage_of(engine, Stage.AI_ANALYSIS))[first]
        assert status == "FAILED" and reason is not None and reason.startswith("invalid output: language: missing")
        assert (await stage_of(engine, Stage.QUESTION_EXTRACTION))[first][0] == "SKIPPED"
        async with engine.connect() as conn:
            rows = (
                await conn.execute(select(ai_processing_requests).order_by(ai_processing_requests.c.requested_at))
            ).all()
        assert [r.success for r in rows] == [False, False, False]
        assert "content: not valid JSON" in rows[0].error_message and "category: " in rows[1].error_message
        assert all(r.total_cost_eur > 0 for r in rows)  # the tokens were spent all the same

        # the API failing (500, no SDK retries here): deferred for a later run, not failed; no key in any error
        stub.responder = lambda body: HTTPFault(500, "upstream overloaded")
        report = await SessionProcessing(
            engine, owner="o:2", now=lambda: NOW, config=SessionProcessingConfig(batch_size=1, provider="openai")
        ).run()
        assert report.deferred == 1
        status, reason = (await stage_of(engine, Stage.AI_ANALYSIS))[second]
        assert status == "PENDING" and reason is not None and "InternalServerError" in reason
        async with engine.connect() as conn:
            errors = (await conn.execute(select(ai_processing_requests.c.error_message))).scalars().all()
        assert not any("sk-test-secret-key" in (e or "") for e in errors)
        assert "sk-test-secret-key" not in caplog.text
    finally:
        await engine.dispose()


def default_analysis_for(session_id: str) -> dict[str, Any]:
    answer = default_analysis({"messages": [{"role": "user", "content": f"Session id: {session_id}"}]})
    assert isinstance(answer, dict)
    return answer


async def test_openai_sdk_retries_transient_errors(
    sqlite_url: str, stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_MAX_RETRIES", "2")
    await upgrade(sqlite_url)
    engine = create_engine(sqlite_url)
    try:
        (session_id,) = await seed(engine, 1, now=NOW)
        stub.fail("POST", "/v1/chat/completions", times=2, status=503)
        report = await SessionProcessing(
            engine, owner="o:1", now=lambda: NOW, config=SessionProcessingConfig(batch_size=0, provider="openai")
        ).run()
        assert report.analysed == 1 and report.calls == 1  # one logical call, three HTTP requests
        assert len(stub.calls("POST", "/v1/chat/completions")) == 3
        assert (await stage_of(engine, Stage.AI_ANALYSIS))[session_id] == ("COMPLETED", None)
    finally:
        await engine.dispose()


class SlowAnalyzer(OpenAIAnalyzer):
    """Counts analyses in flight; each takes a moment (an anyio sleep standing in for the API's latency)."""

    in_flight = 0
    most = 0

    async def analyze(self, transcript: Transcript, on_call: OnCall | None = None) -> Verdict:
        SlowAnalyzer.in_flight += 1
        SlowAnalyzer.most = max(SlowAnalyzer.most, SlowAnalyzer.in_flight)
        try:
            await anyio.sleep(0.05)
            return await super().analyze(transcript, on_call)
        finally:
            SlowAnalyzer.in_flight -= 1


async def test_openai_concurrency_is_a_real_bound(sqlite_url: str, stub: OpenAIStub) -> None:
    await upgrade(sqlite_url)
    engine = create_engine(sqlite_url)
    analyzer = SlowAnalyzer(OpenAISettings())
    try:
        ids = await seed(engine, 10, now=NOW)
        report = await SessionProcessing(
            engine,
            owner="o:1",
            now=lambda: NOW,
            config=SessionProcessingConfig(batch_size=0, provider="openai", concurrency=3),
            analyzer=analyzer,
        ).run()
        assert report.analysed == 10 and len(stub.calls("POST", "/v1/chat/completions")) == 10
        assert SlowAnalyzer.most == 3
        ai = await stage_of(engine, Stage.AI_ANALYSIS)
        assert {ai[s] for s in ids} == {("COMPLETED", None)}
    finally:
        await analyzer.aclose()
        await engine.dispose()
