"""csv-import on real databases: feeds over a loopback HTTP server with Basic auth and from files, dedupe modes,
rejected lines, failing companies, the concurrency bound, the service, and the bundled demo data."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from demo import generate as demo
from domain.companies import Company, list_companies, load_companies_file, upsert_companies
from domain.csv_import import ImportSettings, import_all
from domain.model import CompanyStatus, DuplicateMode
from domain.tables import import_rejections, session_imports
from services.clock import FakeClock
from services.csv_import import CsvImportConfig, CsvImportService
from services.runs import RunStatus, RunStore
from tests.pipeline.conftest import insert_company
from tests.support.feed_server import FeedServer

pytestmark = pytest.mark.anyio

USER, PASSWORD = "acme", "s3cret-Pa55"
NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
SETTINGS = ImportSettings(fetch_timeout=5.0)


def row(session_id: str, **overrides: str) -> list[str]:
    fields = {
        "id": session_id,
        "start": "30.04.2025 11:38:14",
        "end": "30.04.2025 11:40:00",
        "ip": "31.176.221.57",
        "country": "NL",
        "language": "dutch",
        "messages": "3",
        "sentiment": "happy",
        "escalated": "no",
        "forwarded": "no",
        "transcript": f"transcripts/{session_id}.txt",
        "avg": "2.5",
        "tokens": "1200",
        "eur": "0.024",
        "category": "Onboarding",
        "initial": "Hello, I start Monday",
    }
    fields.update(overrides)
    return list(fields.values())


def feed(*rows: list[str], extra: str = "") -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return (out.getvalue() + extra).encode()


# ------------------------------------------------------------------------------------------------ loopback server


@pytest.fixture
def server() -> Iterator[FeedServer]:
    """Serves ``files`` (path -> body); every path needs Basic auth USER:PASSWORD. Records what it saw."""
    with FeedServer(username=USER, password=PASSWORD) as state:
        yield state


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CSV_GOOD", PASSWORD)
    monkeypatch.setenv("TEST_CSV_WRONG", "not-the-password")


async def imports(engine: AsyncEngine, company_id: str) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(session_imports).where(session_imports.c.company_id == company_id))).all()
    return {r.external_session_id: dict(r._mapping) for r in rows}


async def rejections(engine: AsyncEngine, company_id: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        query = (
            select(import_rejections)
            .where(import_rejections.c.company_id == company_id)
            .order_by(import_rejections.c.line_number)
        )
        return [dict(r._mapping) for r in (await conn.execute(query)).all()]


# ------------------------------------------------------------------------------------------------ tests


async def test_http_feed_with_basic_auth_and_failing_companies_do_not_stop_the_others(
    engine: AsyncEngine, server: FeedServer, tmp_path: Path
) -> None:
    server.files["/acme.csv"] = feed(row("a-1"), row("a-2"))
    server.files["/wrong.csv"] = feed(row("w-1"))
    good = await insert_company(
        engine, "good", csv_url=server.url("/acme.csv"), csv_username=USER, csv_password_ref="env:TEST_CSV_GOOD"
    )
    wrong = await insert_company(
        engine,
        "wrong",
        csv_url=server.url("/wrong.csv"),
        csv_username=USER,
        csv_password_ref="env:TEST_CSV_WRONG",
        created_at=NOW,
    )
    no_password = await insert_company(engine, "no-password", csv_url=server.url("/acme.csv"), csv_username=USER)
    unset = await insert_company(
        engine, "unset-secret", csv_url=server.url("/acme.csv"), csv_username=USER, csv_password_ref="env:NOT_SET_X"
    )
    missing = await insert_company(engine, "missing", csv_url=(tmp_path / "nope.csv").as_uri())
    server.failing.add("/boom.csv")
    broken = await insert_company(
        engine, "server-500", csv_url=server.url("/boom.csv"), csv_username=USER, csv_password_ref="env:TEST_CSV_GOOD"
    )

    report = await import_all(engine, SETTINGS, now=lambda: NOW)

    by_name = {r.name: r for r in report.results}
    assert set(by_name) == {"good", "wrong", "no-password", "unset-secret", "missing", "server-500"}
    assert (by_name["good"].error, by_name["good"].inserted, by_name["good"].fetched) == (None, 2, 2)
    assert set(await imports(engine, good)) == {"a-1", "a-2"}
    assert "401" in (by_name["wrong"].error or "")
    assert "401" in (by_name["no-password"].error or "")  # a username alone sends no credentials
    assert "NOT_SET_X" in (by_name["unset-secret"].error or "")
    assert "no such file" in (by_name["missing"].error or "")
    assert "500" in (by_name["server-500"].error or "")
    for company_id in (wrong, no_password, unset, missing, broken):
        assert await imports(engine, company_id) == {}
    for result in report.results:
        assert PASSWORD not in (result.error or "") and "not-the-password" not in (result.error or "")
    auth_by_path = {(path, auth is not None) for path, auth in server.requests}
    assert ("/acme.csv", False) in auth_by_path and ("/acme.csv", True) in auth_by_path
    assert not report.all_failed and len(report.failed) == 5


async def test_file_feed_keeps_zeros_raw_times_and_records_bad_lines(engine: AsyncEngine, tmp_path: Path) -> None:
    path = tmp_path / "feed.csv"
    path.write_bytes(
        feed(
            row("z-1", messages="0", tokens="0", eur="0", avg="0.0"),
            row("z-2", start="09.03.2025 02:30:00", end="09.03.2025 03:10:00"),  # skipped by New York's DST jump
            ["short", "row"],
            row("bad-date", start="31.02.2025 10:00:00"),
            row("bad-number", tokens="many"),
            row("z-3", ip="", initial=""),
        )
    )
    company = await insert_company(engine, "ny", csv_url=path.as_uri(), timezone="America/New_York")

    report = await import_all(engine, ImportSettings(rows_per_statement=2), now=lambda: NOW)

    (result,) = report.results
    assert (result.fetched, result.inserted, result.rejected, result.error) == (6, 3, 3, None)
    stored = await imports(engine, company)
    assert set(stored) == {"z-1", "z-2", "z-3"}
    zero = stored["z-1"]
    assert (zero["messages_sent"], zero["tokens"], zero["tokens_eur"], zero["avg_response_time_seconds"]) == (
        0,
        0,
        0,
        0,
    )
    # Times are stored exactly as the feed had them: the company's zone is applied by import-processing.
    assert (stored["z-2"]["start_time_raw"], stored["z-2"]["end_time_raw"]) == (
        "09.03.2025 02:30:00",
        "09.03.2025 03:10:00",
    )
    assert stored["z-2"]["line_number"] == 2 and stored["z-3"]["line_number"] == 6
    assert stored["z-3"]["ip_address"] is None and stored["z-3"]["initial_message"] is None
    assert all(r["processed_at"] is None and r["attempts"] == 0 for r in stored.values())

    bad = await rejections(engine, company)
    assert [(r["line_number"], r["seen_count"]) for r in bad] == [(3, 1), (4, 1), (5, 1)]
    assert "columns" in bad[0]["reason"] and "start_time_raw" in bad[1]["reason"] and "tokens" in bad[2]["reason"]
    assert bad[0]["raw_line"] == "short,row"

    # The same feed again: nothing new, the rejections are counted again instead of duplicated.
    later = NOW + timedelta(minutes=10)
    (again,) = (await import_all(engine, SETTINGS, now=lambda: later)).results
    assert (again.inserted, again.skipped, again.rejected) == (0, 3, 3)
    bad = await rejections(engine, company)
    assert [(r["line_number"], r["seen_count"]) for r in bad] == [(3, 2), (4, 2), (5, 2)]
    assert all(r["first_seen_at"] == NOW and r["last_seen_at"] == later for r in bad)


async def test_duplicate_modes_skip_and_update(engine: AsyncEngine, tmp_path: Path) -> None:
    path = tmp_path / "feed.csv"
    path.write_bytes(feed(row("d-1"), row("d-2"), row("d-3")))
    company = await insert_company(engine, "dupes", csv_url=path.as_uri())
    await import_all(engine, SETTINGS, now=lambda: NOW)
    async with engine.begin() as conn:  # d-2 became a session already
        await conn.execute(
            update(session_imports).where(session_imports.c.external_session_id == "d-2").values(processed_at=NOW)
        )
    path.write_bytes(feed(row("d-1", language="german", tokens="0"), row("d-2", language="german"), row("d-4")))
    later = NOW + timedelta(hours=1)

    (skip,) = (await import_all(engine, SETTINGS, now=lambda: later)).results
    assert (skip.inserted, skip.updated, skip.skipped) == (1, 0, 2)
    stored = await imports(engine, company)
    assert {k: v["language"] for k, v in stored.items()} == {
        "d-1": "dutch",
        "d-2": "dutch",
        "d-3": "dutch",
        "d-4": "dutch",
    }

    path.write_bytes(
        feed(row("d-1", language="german", tokens="0"), row("d-2", language="german"), row("d-5"), row("d-3"))
    )
    update_mode = ImportSettings(duplicate_mode=DuplicateMode.UPDATE, rows_per_statement=3)
    (upd,) = (await import_all(engine, update_mode, now=lambda: later)).results
    assert (upd.inserted, upd.updated, upd.skipped) == (1, 2, 1)
    stored = await imports(engine, company)
    assert stored["d-1"]["language"] == "german" and stored["d-1"]["tokens"] == 0
    assert stored["d-1"]["updated_at"] == later and stored["d-1"]["created_at"] == NOW
    assert stored["d-2"]["language"] == "dutch" and stored["d-2"]["updated_at"] == NOW  # processed: left alone
    assert stored["d-2"]["processed_at"] == NOW
    assert set(stored) == {"d-1", "d-2", "d-3", "d-4", "d-5"}
    assert stored["d-3"]["line_number"] == 4


async def test_concurrency_is_bounded_and_pages_cover_only_active_companies(
    sqlite_url: str, server: FeedServer
) -> None:
    from storage.engine import create_engine
    from storage.migrate import upgrade

    await upgrade(sqlite_url)
    engine = create_engine(sqlite_url)
    try:
        server.delay = 0.15
        names = [f"c{i}" for i in range(7)]
        for i, name in enumerate(names):
            server.files[f"/{name}.csv"] = feed(row(f"{name}-1"))
            await insert_company(
                engine,
                name,
                csv_url=server.url(f"/{name}.csv"),
                csv_username=USER,
                csv_password_ref="env:TEST_CSV_GOOD",
                created_at=NOW + timedelta(seconds=i),
            )
        await insert_company(engine, "paused", csv_url=server.url("/c0.csv"), status=CompanyStatus.SUSPENDED)
        settings = ImportSettings(batch_size=3, max_concurrent=2, fetch_timeout=5.0)

        report = await import_all(engine, settings, now=lambda: NOW)

        assert sorted(r.name for r in report.results) == names  # every page, never the suspended one
        assert all(r.inserted == 1 for r in report.results)
        assert server.max_in_flight == 2  # parallel, and never more than max_concurrent
    finally:
        await engine.dispose()


async def test_the_service_counts_rows_and_fails_only_when_every_company_failed(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    store = RunStore(engine, "node-a")
    path = tmp_path / "feed.csv"
    path.write_bytes(feed(row("s-1"), row("s-2")))
    await insert_company(engine, "ok", csv_url=path.as_uri())
    await insert_company(engine, "gone", csv_url=(tmp_path / "gone.csv").as_uri())
    clock = FakeClock(NOW)
    service = CsvImportService("csv-import", CsvImportConfig(max_retries=0), store=store, clock=clock)
    assert await service.run_now() is RunStatus.SUCCEEDED  # one company failed, the other imported
    (run,), _ = await store.list_runs("csv-import", limit=10, offset=0)
    assert run.items_processed == 2

    path.unlink()  # now every company fails
    clock.advance(600)
    assert await service.run_now() is RunStatus.FAILED
    runs, _ = await store.list_runs("csv-import", limit=10, offset=0)
    failed = [r for r in runs if r.status == "failed"]
    assert failed and "all 2 company import(s) failed" in (failed[0].error or "")


def test_config_reads_the_original_env_names_and_values() -> None:
    config = CsvImportConfig.model_validate(
        {"timeout": "120000", "batch_size": "3", "max_concurrent": "2", "duplicate_mode": "update"}
    )
    assert config.timeout == timedelta(minutes=2)  # bare numbers are milliseconds
    assert (config.batch_size, config.max_concurrent, config.duplicate_mode) == (3, 2, DuplicateMode.UPDATE)
    defaults = CsvImportConfig()
    assert (defaults.interval, defaults.timeout, defaults.batch_size, defaults.max_concurrent) == (
        "*/10 * * * *",
        timedelta(minutes=5),
        10,
        5,
    )
    with pytest.raises(ValueError, match="duplicate_mode"):
        CsvImportConfig.model_validate({"duplicate_mode": "merge"})


# ------------------------------------------------------------------------------------------------ demo data


def test_the_demo_generator_is_deterministic_and_the_committed_files_are_its_output() -> None:
    first, second = demo.generate(), demo.generate()
    assert first == second
    root = Path(demo.__file__).parent
    on_disk = {
        str(p.relative_to(root)): p.read_bytes()
        for p in [root / "companies.yaml", *(root / "feeds").rglob("*")]
        if p.is_file()
    }
    assert set(on_disk) == set(first)
    changed = [name for name, data in first.items() if on_disk[name] != data]
    assert changed == [], f"run python -m demo.generate: {changed[:5]}"
    assert sum(len(data) for data in first.values()) < 2 * 1024 * 1024


async def test_the_demo_feeds_import_with_three_documented_rejections(engine: AsyncEngine) -> None:
    specs = load_companies_file(Path(demo.__file__).parent / "companies.yaml")
    await upsert_companies(engine, specs, NOW)
    report = await import_all(engine, SETTINGS, now=lambda: NOW)
    assert report.failed == []
    assert report.total("inserted") == 300 and report.total("rejected") == 3
    companies: list[Company] = await list_companies(engine)
    spree = next(c for c in companies if c.name == "Spree Logistik")
    assert [r["line_number"] for r in await rejections(engine, spree.id)] == [11, 42, 73]
    async with engine.connect() as conn:
        no_transcript = await conn.scalar(
            select(func.count()).select_from(session_imports).where(session_imports.c.full_transcript_url.is_(None))
        )
    assert no_transcript == 9


async def test_uneven_batches_land_every_row_once(engine: AsyncEngine, tmp_path: Path) -> None:
    path = tmp_path / "feed.csv"
    path.write_bytes(feed(*(row(f"u-{n:03d}", tokens=str(n)) for n in range(23))))
    company = await insert_company(engine, "uneven", csv_url=path.as_uri())
    settings = ImportSettings(rows_per_statement=10)  # 10 + 10 + (2 + 1): the remainder goes as powers of two
    (first,) = (await import_all(engine, settings, now=lambda: NOW)).results
    assert (first.fetched, first.inserted, first.skipped) == (23, 23, 0)
    stored = await imports(engine, company)
    assert {k: (v["tokens"], v["line_number"]) for k, v in stored.items()} == {
        f"u-{n:03d}": (n, n + 1) for n in range(23)
    }
    assert len({v["id"] for v in stored.values()}) == 23
    update_mode = ImportSettings(rows_per_statement=10, duplicate_mode=DuplicateMode.UPDATE)
    (second,) = (await import_all(engine, update_mode, now=lambda: NOW)).results
    assert (second.inserted, second.updated, second.skipped) == (0, 23, 0)
