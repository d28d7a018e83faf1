"""import-processing on real databases: sessions, messages and stages from imports, transcripts fetched from a
loopback HTTP server (Basic auth, transient and permanent failures) and from files, claims shared by owners."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.import_processing import CLAIM, Outcome, Report, Settings, _Processor, process_imports
from domain.model import Stage, StageStatus
from domain.tables import companies, messages, processing_status, session_imports, sessions
from services.import_processing import ImportProcessingConfig, ImportProcessingService
from services.runs import RunStatus, RunStore
from storage.claims import claim_batch
from storage.engine import create_engine
from tests.support.feed_server import FeedServer
from tests.support.wait import until

pytestmark = pytest.mark.anyio

USER, PASSWORD = "acme", "s3cret-Pa55"
NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
FAST = Settings(batch_size=20, concurrency=5, fetch_attempts=3, fetch_backoff=0.01, fetch_time_limit=5.0)
TRANSCRIPT = (
    "[30.04.2025 11:38:14] User: Hello, I have a question\n"
    "about my contract.\n"
    "[30.04.2025 11:38:20] Assistant: Of course, ask away.\n"
    "User: thanks"
)


# ------------------------------------------------------------------------------------------------ loopback server


@pytest.fixture
def feed() -> Iterator[FeedServer]:
    """Transcripts over loopback HTTP; every path needs Basic auth USER:PASSWORD."""
    with FeedServer(username=USER, password=PASSWORD) as server:
        yield server


# ------------------------------------------------------------------------------------------------ database
# `engine`: tests/pipeline/conftest.py (a fresh migrated database on every engine).


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ACME_PASSWORD", PASSWORD)


async def add_company(
    engine: AsyncEngine,
    name: str,
    csv_url: str,
    *,
    timezone: str = "UTC",
    status: str = "ACTIVE",
    credentials: bool = True,
) -> str:
    company_id = str(uuid.uuid4())
    async with engine.begin() as conn:
        await conn.execute(
            insert(companies).values(
                id=company_id,
                name=name,
                status=status,
                csv_url=csv_url,
                csv_username=USER if credentials else None,
                csv_password_ref="env:TEST_ACME_PASSWORD" if credentials else None,
                timezone=timezone,
                created_at=NOW,
                updated_at=NOW,
            )
        )
    return company_id


async def add_imports(engine: AsyncEngine, company_id: str, rows: list[dict[str, Any]]) -> list[str]:
    """Imports with defaults for every column; ``rows`` override them (external_session_id at least)."""
    values = []
    for i, row in enumerate(rows):
        values.append(
            {
                "id": str(uuid.uuid4()),
                "company_id": company_id,
                "start_time_raw": "30.04.2025 11:38:14",
                "end_time_raw": "30.04.2025 11:45:00",
                "ip_address": "31.176.221.57",
                "country_code": "BA",
                "full_transcript_url": None,
                "avg_response_time_seconds": 2.5,
                "initial_message": "Hello",
                "raw_transcript_content": None,
                "line_number": i + 1,
                "created_at": NOW + timedelta(microseconds=i),
                "updated_at": NOW,
                "attempts": 0,
                **row,
            }
        )
    async with engine.begin() as conn:
        await conn.execute(insert(session_imports), values)
    return [v["id"] for v in values]


async def run(engine: AsyncEngine, settings: Settings = FAST, owner: str = "node-a:run-1", **kw: Any) -> Report:
    with anyio.fail_after(60):
        return await process_imports(engine, owner=owner, settings=settings, now=lambda: NOW, **kw)


async def session_of(engine: AsyncEngine, external_id: str) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(sessions).where(sessions.c.external_session_id == external_id))).first()
    return dict(row._mapping) if row else None


async def stages_of(engine: AsyncEngine, session_id: str) -> dict[Stage, tuple[StageStatus, str | None, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(
                processing_status.c.stage,
                processing_status.c.status,
                processing_status.c.error_message,
                processing_status.c.details,
            ).where(processing_status.c.session_id == session_id)
        )
        return {Stage(s): (StageStatus(st), err, details) for s, st, err, details in rows}


async def messages_of(engine: AsyncEngine, session_id: str) -> list[tuple[int, str, str, datetime | None]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(messages.c.position, messages.c.role, messages.c.content, messages.c.timestamp)
            .where(messages.c.session_id == session_id)
            .order_by(messages.c.position)
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]


async def imports_by_external(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(session_imports))
        return {r.external_session_id: dict(r._mapping) for r in rows}


async def count(engine: AsyncEngine, table: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


# ------------------------------------------------------------------------------------------------ tests


async def test_imports_become_sessions_with_messages_and_stage_statuses(
    engine: AsyncEngine, feed: FeedServer, tmp_path: Path
) -> None:
    feed.files = {"/feeds/t/rel.txt": TRANSCRIPT.encode(), "/abs/flaky.txt": b"User: second try worked"}
    feed.flaky = {"/abs/flaky.txt": 1}
    (tmp_path / "transcripts").mkdir()
    (tmp_path / "transcripts" / "f1.txt").write_text("Agent: from a file\nwrapped line", encoding="utf-8")

    berlin = await add_company(engine, "Berlin GmbH", feed.url("/feeds/acme.csv"), timezone="Europe/Berlin")
    files = await add_company(engine, "Files Ltd", f"file://{tmp_path}/feed.csv", credentials=False)
    suspended = await add_company(engine, "Paused Inc", feed.url("/feeds/p.csv"), status="SUSPENDED")
    await add_imports(
        engine,
        berlin,
        [
            {"external_session_id": "rel", "full_transcript_url": "t/rel.txt", "ip_address": " 2001:DB8::1 "},
            {"external_session_id": "flaky", "full_transcript_url": feed.url("/abs/flaky.txt")},
            {"external_session_id": "gone", "full_transcript_url": feed.url("/abs/missing.txt")},
            {"external_session_id": "no-url", "full_transcript_url": "  ", "ip_address": ""},
            {
                "external_session_id": "stored",
                "full_transcript_url": "t/never.txt",
                "raw_transcript_content": "User: kept",
            },
        ],
    )
    await add_imports(engine, files, [{"external_session_id": "file", "full_transcript_url": "transcripts/f1.txt"}])
    await add_imports(engine, suspended, [{"external_session_id": "paused", "full_transcript_url": "t/rel.txt"}])

    settled: list[Outcome] = []
    report = await run(engine, on_settled=settled.append)
    assert report.outcomes[Outcome.CREATED] == 6 and settled == [Outcome.CREATED] * 6
    assert report.transcripts_fetched == 3 and report.transcript_failures == 1

    # Company time zone: 30.04.2025 11:38:14 in Berlin (CEST, UTC+2) is 09:38:14Z, whatever the server's zone.
    rel = await session_of(engine, "rel")
    assert rel is not None
    assert rel["start_time"] == datetime(2025, 4, 30, 9, 38, 14, tzinfo=UTC)
    assert rel["end_time"] == datetime(2025, 4, 30, 9, 45, tzinfo=UTC)
    assert rel["ip_address"] == "2001:db8::1" and rel["country"] == "BA" and rel["avg_response_time"] == 2.5
    assert rel["initial_msg"] == "Hello" and rel["full_transcript_url"] == "t/rel.txt"
    assert await messages_of(engine, rel["id"]) == [
        (0, "user", "Hello, I have a question\nabout my contract.", datetime(2025, 4, 30, 9, 38, 14, tzinfo=UTC)),
        (1, "assistant", "Of course, ask away.", datetime(2025, 4, 30, 9, 38, 20, tzinfo=UTC)),
        (2, "user", "thanks", None),
    ]
    stages = await stages_of(engine, rel["id"])
    assert {s: v[0] for s, v in stages.items()} == {
        Stage.CSV_IMPORT: StageStatus.COMPLETED,
        Stage.TRANSCRIPT_FETCH: StageStatus.COMPLETED,
        Stage.SESSION_CREATION: StageStatus.COMPLETED,
        Stage.AI_ANALYSIS: StageStatus.PENDING,
        Stage.QUESTION_EXTRACTION: StageStatus.PENDING,
    }
    assert stages[Stage.TRANSCRIPT_FETCH][2]["url"] == feed.url("/feeds/t/rel.txt")  # resolved against the feed
    assert stages[Stage.SESSION_CREATION][2] == {"hasTranscript": True, "messageCount": 3}

    flaky = await session_of(engine, "flaky")
    assert flaky is not None
    assert (await stages_of(engine, flaky["id"]))[Stage.TRANSCRIPT_FETCH][2]["fetchAttempts"] == 2
    assert await messages_of(engine, flaky["id"]) == [(0, "user", "second try worked", None)]

    gone = await session_of(engine, "gone")  # permanent failure: the session exists, without messages
    assert gone is not None and await messages_of(engine, gone["id"]) == []
    gone_stages = await stages_of(engine, gone["id"])
    status, error, _ = gone_stages[Stage.TRANSCRIPT_FETCH]
    assert status is StageStatus.FAILED and error is not None and "404" in error and PASSWORD not in error
    assert gone_stages[Stage.SESSION_CREATION][0] is StageStatus.COMPLETED
    assert gone_stages[Stage.SESSION_CREATION][2] == {"hasTranscript": False, "messageCount": 0}

    no_url = await session_of(engine, "no-url")
    assert no_url is not None and no_url["ip_address"] is None
    assert (await stages_of(engine, no_url["id"]))[Stage.TRANSCRIPT_FETCH][:2] == (
        StageStatus.SKIPPED,
        "No transcript URL provided",
    )

    stored = await session_of(engine, "stored")  # already-fetched content is reused, never fetched again
    assert stored is not None
    assert (await stages_of(engine, stored["id"]))[Stage.TRANSCRIPT_FETCH][2]["source"] == "already_fetched"
    assert await messages_of(engine, stored["id"]) == [(0, "user", "kept", None)]

    from_file = await session_of(engine, "file")
    assert from_file is not None
    assert await messages_of(engine, from_file["id"]) == [(0, "assistant", "from a file\nwrapped line", None)]

    assert await session_of(engine, "paused") is None  # only ACTIVE companies are processed
    imports = await imports_by_external(engine)
    assert imports["paused"]["processed_at"] is None
    assert imports["rel"]["raw_transcript_content"] == TRANSCRIPT.strip()
    assert all(
        imports[k]["processed_at"] is not None and imports[k]["claimed_by"] is None for k in imports if k != "paused"
    )

    # Every request carried the company's Basic credentials; the stored transcript was never requested.
    assert feed.requests and all(auth is not None for _, auth in feed.requests)
    assert "/feeds/t/never.txt" not in {path for path, _ in feed.requests}
    requests_before = len(feed.requests)

    again = await run(engine, owner="node-b:run-2")
    assert again.batches == 0 and again.settled == 0
    assert len(feed.requests) == requests_before
    assert await count(engine, sessions) == 6


async def test_bad_imports_are_marked_failed_once_and_never_reselected(engine: AsyncEngine) -> None:
    company = await add_company(engine, "Acme", "file:///nonexistent/feed.csv", timezone="Europe/Berlin")
    await add_imports(
        engine,
        company,
        [
            {"external_session_id": "bad-date", "start_time_raw": "31.02.2025 10:00:00"},
            {"external_session_id": "bad-ip", "ip_address": "999.1.1.1"},
            {"external_session_id": "backwards", "start_time_raw": "30.04.2025 12:00:00"},
            {"external_session_id": "empty-end", "end_time_raw": ""},
            {"external_session_id": "good"},
        ],
    )
    report = await run(engine)
    assert report.outcomes[Outcome.REJECTED] == 4 and report.outcomes[Outcome.CREATED] == 1
    imports = await imports_by_external(engine)
    expected = {
        "bad-date": "start_time: '31.02.2025 10:00:00' is not a DD.MM.YYYY HH:mm:ss time",
        "bad-ip": "ip_address: '999.1.1.1' is not an IP address",
        "backwards": "end_time: '30.04.2025 11:45:00' is before the start time '30.04.2025 12:00:00'",
        "empty-end": "end_time: '' is not a DD.MM.YYYY HH:mm:ss time",
    }
    for name, reason in expected.items():
        row = imports[name]
        assert (row["error"], row["attempts"], row["claimed_by"]) == (reason, 1, None)
        assert row["processed_at"] is not None
        assert await session_of(engine, name) is None
    assert imports["good"]["error"] is None

    again = await run(engine, owner="node-a:run-2")  # nothing left to select: no endless re-selection
    assert again.batches == 0
    assert (await imports_by_external(engine))["bad-date"]["attempts"] == 1


async def test_end_in_the_repeated_autumn_hour_is_read_as_its_second_occurrence(engine: AsyncEngine) -> None:
    # Berlin, 26.10.2025: 02:00-03:00 happens twice. 02:50 (CEST) -> 02:10 (CET) is a 20-minute session.
    company = await add_company(engine, "Acme", "file:///x/feed.csv", timezone="Europe/Berlin")
    await add_imports(
        engine,
        company,
        [
            {
                "external_session_id": "dst",
                "start_time_raw": "26.10.2025 02:50:00",
                "end_time_raw": "26.10.2025 02:10:00",
            }
        ],
    )
    assert (await run(engine)).outcomes[Outcome.CREATED] == 1
    dst = await session_of(engine, "dst")
    assert dst is not None and dst["end_time"] - dst["start_time"] == timedelta(minutes=20)


async def test_an_import_processed_again_updates_its_session_and_replaces_its_messages(engine: AsyncEngine) -> None:
    company = await add_company(engine, "Acme", "file:///x/feed.csv")
    (import_id,) = await add_imports(
        engine, company, [{"external_session_id": "s", "raw_transcript_content": "User: one\nAssistant: two"}]
    )
    assert (await run(engine)).outcomes[Outcome.CREATED] == 1
    first = await session_of(engine, "s")
    assert first is not None
    async with engine.begin() as conn:  # e.g. an operator re-queues it after the transcript was corrected
        await conn.execute(
            update(session_imports)
            .where(session_imports.c.id == import_id)
            .values(processed_at=None, raw_transcript_content="System: only this", ip_address="10.0.0.1")
        )
        await conn.execute(
            update(processing_status)
            .where(processing_status.c.session_id == first["id"], processing_status.c.stage == "AI_ANALYSIS")
            .values(status="COMPLETED")
        )
    assert (await run(engine, owner="node-a:run-2")).outcomes[Outcome.CREATED] == 1
    second = await session_of(engine, "s")
    assert second is not None and second["id"] == first["id"] and second["ip_address"] == "10.0.0.1"
    assert await messages_of(engine, first["id"]) == [(0, "system", "only this", None)]
    stages = await stages_of(engine, first["id"])
    assert stages[Stage.SESSION_CREATION][2] == {"hasTranscript": True, "messageCount": 1}
    assert stages[Stage.AI_ANALYSIS][0] is StageStatus.COMPLETED  # analysis state is not the import's to reset
    assert await count(engine, sessions) == 1 and await count(engine, processing_status) == 5


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_transient_failure_defers_the_import_then_settles_it(engine: AsyncEngine, feed: FeedServer) -> None:
    feed.failing = {"/down.txt"}
    company = await add_company(engine, "Acme", feed.url("/feed.csv"))
    await add_imports(engine, company, [{"external_session_id": "down", "full_transcript_url": "down.txt"}])
    settings = Settings(fetch_attempts=2, fetch_backoff=0.01, max_attempts=2, defer_seconds=1.5)

    first = await run(engine, settings)
    assert first.outcomes[Outcome.DEFERRED] == 1 and len(feed.requests) == 2  # retried inside the run
    row = (await imports_by_external(engine))["down"]
    assert row["processed_at"] is None and row["attempts"] == 1 and "500" in row["error"]
    assert await session_of(engine, "down") is None
    assert (await run(engine, settings, owner="node-b:r")).batches == 0  # deferred: no run spins on it

    async def settled() -> bool:
        report = await run(engine, settings, owner=f"node-b:{uuid.uuid4()}")
        return report.outcomes[Outcome.CREATED] == 1

    await until(settled, timeout=10, interval=0.1, what="the deferred import to be claimable again")
    down = await session_of(engine, "down")
    assert down is not None
    status, error, details = (await stages_of(engine, down["id"]))[Stage.TRANSCRIPT_FETCH]
    assert status is StageStatus.FAILED and error is not None and "500" in error and details["transient"] is True
    row = (await imports_by_external(engine))["down"]
    assert row["processed_at"] is not None and row["error"] is None and row["attempts"] == 2


async def test_a_transcript_over_64_kib_is_stored_whole(engine: AsyncEngine, feed: FeedServer) -> None:
    # MariaDB's TEXT stops at 64 KiB; transcripts and messages are LONGTEXT there.
    feed.files = {"/big.txt": b"User: " + b"x" * 70_000, "/ok.txt": b"User: fine"}
    company = await add_company(engine, "Acme", feed.url("/feed.csv"))
    await add_imports(
        engine,
        company,
        [
            {"external_session_id": "big", "full_transcript_url": "big.txt"},
            {"external_session_id": "ok", "full_transcript_url": "ok.txt"},
        ],
    )
    report = await run(engine)
    assert report.outcomes[Outcome.CREATED] == 2
    big = (await imports_by_external(engine))["big"]
    assert big["error"] is None and len(big["raw_transcript_content"]) == len("User: ") + 70_000
    big_session = await session_of(engine, "big")
    assert big_session is not None
    [(position, role, content, _)] = await messages_of(engine, big_session["id"])
    assert (position, role, content) == (0, "user", "x" * 70_000)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_credentials_go_only_to_the_feeds_origin_and_remote_feeds_cannot_read_files(
    engine: AsyncEngine, feed: FeedServer, tmp_path: Path
) -> None:
    secret_file = tmp_path / "local.txt"
    secret_file.write_text("User: local file content", encoding="utf-8")
    # The feed's origin names the server "localhost" (import processing never fetches the feed itself); the
    # transcript URL names it 127.0.0.1: another origin, so the credentials stay home.
    company = await add_company(engine, "Acme", f"http://localhost:{feed.port}/feed.csv")
    other_origin = feed.url("/t/x.txt")
    feed.files = {"/t/x.txt": b"User: x"}
    await add_imports(
        engine,
        company,
        [
            {"external_session_id": "elsewhere", "full_transcript_url": other_origin},
            {"external_session_id": "local", "full_transcript_url": f"file://{secret_file}"},
        ],
    )
    assert (await run(engine)).outcomes[Outcome.CREATED] == 2
    assert feed.requests == [("/t/x.txt", None)]  # asked without the company's credentials (and refused)
    for name, expected in (("elsewhere", "401"), ("local", "only followed for file:// feeds")):
        session = await session_of(engine, name)
        assert session is not None and await messages_of(engine, session["id"]) == []
        status, error, _ = (await stages_of(engine, session["id"]))[Stage.TRANSCRIPT_FETCH]
        assert status is StageStatus.FAILED and error is not None and expected in error


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_missing_credentials_name_the_reference_not_a_value(
    engine: AsyncEngine, feed: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_ACME_PASSWORD")
    company = await add_company(engine, "Acme", feed.url("/feed.csv"))
    await add_imports(engine, company, [{"external_session_id": "x", "full_transcript_url": "x.txt"}])
    report = await run(engine, Settings(max_attempts=1))
    assert report.outcomes[Outcome.CREATED] == 1 and feed.requests == []
    x = await session_of(engine, "x")
    assert x is not None
    status, error, _ = (await stages_of(engine, x["id"]))[Stage.TRANSCRIPT_FETCH]
    assert status is StageStatus.FAILED and error is not None and "TEST_ACME_PASSWORD" in error


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_concurrency_is_a_real_bound(engine: AsyncEngine, feed: FeedServer) -> None:
    feed.delay = 0.2
    feed.files = {f"/t/{i}.txt": f"User: {i}".encode() for i in range(9)}
    company = await add_company(engine, "Acme", feed.url("/feed.csv"))
    await add_imports(
        engine, company, [{"external_session_id": str(i), "full_transcript_url": f"t/{i}.txt"} for i in range(9)]
    )
    report = await run(engine, Settings(batch_size=50, concurrency=3))
    assert report.outcomes[Outcome.CREATED] == 9
    assert feed.max_in_flight == 3  # three at once, never more


async def test_two_owners_over_200_imports_create_each_session_exactly_once(engine: AsyncEngine, db_url: str) -> None:
    company = await add_company(engine, "Acme", "file:///x/feed.csv")
    await add_imports(
        engine,
        company,
        [
            {"external_session_id": f"s{i:03}", "raw_transcript_content": f"User: q{i}\nAssistant: a{i}"}
            for i in range(200)
        ],
    )
    reports: dict[str, Report] = {}
    other = create_engine(db_url)  # a second replica: its own connection pool

    async def owner(name: str, eng: AsyncEngine) -> None:
        reports[name] = await run(eng, Settings(batch_size=10, concurrency=5), owner=name)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(owner, "node-a:run-1", engine)
            tg.start_soon(owner, "node-b:run-1", other)
    finally:
        await other.dispose()
    created = {name: r.outcomes[Outcome.CREATED] for name, r in reports.items()}
    assert sum(created.values()) == 200, created
    assert all(n > 0 for n in created.values()), created  # both replicas shared the backlog
    assert all(r.outcomes[Outcome.LOST] == 0 for r in reports.values())
    assert await count(engine, sessions) == 200 and await count(engine, messages) == 400
    async with engine.connect() as conn:
        distinct = (await conn.execute(select(func.count(sessions.c.import_id.distinct())))).scalar_one()
        statuses = (await conn.execute(select(func.count()).select_from(processing_status))).scalar_one()
    assert distinct == 200 and statuses == 1000


async def test_a_cancelled_run_loses_nothing_and_the_rerun_repeats_nothing(
    engine: AsyncEngine, feed: FeedServer
) -> None:
    feed.files = {f"/t/{i}.txt": f"User: hello {i}\nAssistant: hi {i}".encode() for i in range(60)}
    company = await add_company(engine, "Acme", feed.url("/feed.csv"))
    await add_imports(
        engine, company, [{"external_session_id": f"s{i:02}", "full_transcript_url": f"t/{i}.txt"} for i in range(60)]
    )
    with anyio.CancelScope() as scope:
        done: list[Outcome] = []

        def settled(outcome: Outcome) -> None:
            done.append(outcome)
            if len(done) == 15:
                scope.cancel()  # cut off mid-batch: other imports are mid-fetch or mid-transaction

        await run(engine, Settings(batch_size=25, concurrency=5, lease_seconds=300), on_settled=settled)
    assert scope.cancelled_caught
    first = await count(engine, sessions)
    assert 15 <= first < 60
    imports = await imports_by_external(engine)
    # Unfinished claims were released (not left to run out their 300 s lease); finished imports hold none.
    assert all(row["claimed_by"] is None for row in imports.values())
    assert sum(row["processed_at"] is not None for row in imports.values()) == first

    report = await run(engine, owner="node-b:run-2")
    assert report.outcomes[Outcome.CREATED] == 60 - first
    assert await count(engine, sessions) == 60 and await count(engine, messages) == 120
    assert await count(engine, processing_status) == 300


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_write_after_the_claim_passed_to_another_owner_is_dropped(engine: AsyncEngine) -> None:
    company = await add_company(engine, "Acme", "file:///x/feed.csv")
    (import_id,) = await add_imports(
        engine, company, [{"external_session_id": "s", "raw_transcript_content": "User: a"}]
    )
    # "old" claims the import, then "new" takes it over (as after an expired lease) before "old" writes.
    assert await claim_batch(engine, CLAIM, owner="old", limit=10, lease_seconds=300) == [import_id]
    async with engine.begin() as conn:
        await conn.execute(update(session_imports).values(claimed_by="new"))

    processor = _Processor(engine, "old", FAST, lambda: NOW, lambda: True, None, logging.getLogger(__name__))
    processor.client = httpx.AsyncClient()  # unused: the transcript is stored
    await processor._batch([import_id])  # the batch path without its claim
    await processor.client.aclose()

    assert processor.report.outcomes[Outcome.LOST] == 1
    assert await session_of(engine, "s") is None
    row = (await imports_by_external(engine))["s"]
    assert row["processed_at"] is None and row["claimed_by"] == "new"  # the new owner's claim is untouched


# ------------------------------------------------------------------------------------------------ the service


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_service_runs_and_counts_each_import(engine: AsyncEngine) -> None:
    company = await add_company(engine, "Acme", "file:///x/feed.csv")
    await add_imports(
        engine,
        company,
        [{"external_session_id": f"s{i}", "raw_transcript_content": "User: hi"} for i in range(7)]
        + [{"external_session_id": "bad", "ip_address": "nope"}],
    )
    store = RunStore(engine, "node-a")
    service = ImportProcessingService("import-processing", ImportProcessingConfig(batch_size=3), store=store)
    assert await service.run_now() is RunStatus.SUCCEEDED
    (record,), _ = await store.list_runs("import-processing", limit=10, offset=0)
    assert record.items_processed == 8 and record.status == "succeeded"
    assert await count(engine, sessions) == 7


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_large_backlog_ends_the_run_before_its_timeout_and_the_rest_waits(
    engine: AsyncEngine, feed: FeedServer
) -> None:
    feed.delay = 0.05
    feed.files = {f"/t/{i}.txt": b"User: hi" for i in range(60)}
    company = await add_company(engine, "Acme", feed.url("/feed.csv"))
    await add_imports(
        engine, company, [{"external_session_id": f"s{i}", "full_transcript_url": f"t/{i}.txt"} for i in range(60)]
    )
    config = ImportProcessingConfig(timeout=timedelta(milliseconds=1500), concurrency=1, batch_size=5, max_retries=0)
    store = RunStore(engine, "node-a")
    service = ImportProcessingService("import-processing", config, store=store)
    assert await service.run_now() is RunStatus.SUCCEEDED  # not timed_out: it stopped taking work in time
    (record,), _ = await store.list_runs("import-processing", limit=10, offset=0)
    done = await count(engine, sessions)
    assert record.items_processed == done and 0 < done < 60
    imports = await imports_by_external(engine)
    assert all(row["claimed_by"] is None for row in imports.values())  # the rest is free for the next run


def test_config_reads_the_original_variable_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from manager.config import load_config

    monkeypatch.setenv("IMPORT_PROCESSING_TIMEOUT", "120000")
    monkeypatch.setenv("IMPORT_PROCESSING_BATCH_SIZE", "25")
    monkeypatch.setenv("IMPORT_PROCESSING_CONCURRENCY", "3")
    monkeypatch.setenv("IMPORT_PROCESSING_INTERVAL", "*/2 * * * *")
    monkeypatch.setenv("SCHEDULER_PLUGINS", "services.import_processing")
    (spec,) = [s for s in load_config().services if s.name == "import-processing"]
    config = spec.config
    assert isinstance(config, ImportProcessingConfig)
    assert (config.timeout, config.batch_size, config.concurrency, config.interval) == (
        timedelta(minutes=2),
        25,
        3,
        "*/2 * * * *",
    )
    defaults = ImportProcessingConfig()
    assert (defaults.interval, defaults.batch_size, defaults.concurrency) == ("*/5 * * * *", 50, 5)
