"""CSV import into PostgreSQL: domain.csv_import versus a raw asyncpg ``executemany`` of the same rows.

    python -m bench.csv_import [--rows 100000] [--rounds 3] [--out bench/results]

A fresh database is created (and dropped afterwards) on the server at BENCH_POSTGRES_URL. A deterministic feed
of ``--rows`` rows is written to a temporary file. Each round, after emptying ``session_imports``:

* ``import``: :func:`domain.csv_import.import_company` over the ``file://`` feed — read, parse and validate
  every line, then one multi-row INSERT ... ON CONFLICT DO NOTHING per 1,000 rows, a transaction each;
* ``raw``: the already-parsed rows (same ids, values and types) sent by asyncpg's ``executemany`` of a plain
  INSERT in one transaction, through the same driver, on the same server, in the same process.

Modes alternate; figures are medians over rounds. rows/s = rows / seconds; the ratio is import / raw
(target from the issue: >= 0.5). The import's time includes reading and parsing the feed; the raw one does not.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.companies import Company
from domain.csv_import import ImportSettings, import_company
from domain.csvfeed import COLUMNS, parse_feed
from domain.model import CompanyStatus
from domain.tables import companies, session_imports
from storage.engine import create_engine
from storage.migrate import upgrade
from tests.db import create_database, drop_database

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
RAW_COLUMNS = (*COLUMNS, "id", "company_id", "line_number", "created_at", "updated_at", "attempts")


def make_feed(rows: int) -> str:
    """A deterministic feed: realistic widths, some zeros and empty fields, quoted commas."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for i in range(rows):
        day, second = 1 + i % 28, i % 86_400
        start = f"{day:02d}.04.2025 {second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}"
        writer.writerow(
            [
                str(uuid.UUID(int=i, version=4)),
                start,
                start,
                f"10.{i % 256}.{i // 256 % 256}.{i % 250 + 1}",
                "NL",
                "dutch" if i % 3 else "english",
                str(i % 9),
                "happy" if i % 2 else "neutral",
                "no",
                "yes" if i % 10 == 0 else "no",
                f"transcripts/{i}.txt" if i % 20 else "",
                f"{i % 50 / 10:.1f}",
                str(i % 3000),
                f"{i % 3000 * 0.00002:.5f}",
                "Vacation",
                f"Question {i}, about my vacation days?",
            ]
        )
    return out.getvalue()


async def reset(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE session_imports CASCADE"))  # sessions reference it (and are empty)


async def count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(session_imports)) or 0)


async def run_import(engine: AsyncEngine, company: Company, rows: int) -> float:
    started = time.perf_counter()
    result = await import_company(engine, company, ImportSettings(), now=lambda: NOW)
    elapsed = time.perf_counter() - started
    assert result.error is None and result.inserted == rows, result
    return elapsed


async def run_raw(engine: AsyncEngine, records: list[tuple[Any, ...]]) -> float:
    placeholders = ", ".join(f"${i}" for i in range(1, len(RAW_COLUMNS) + 1))
    sql = f"INSERT INTO session_imports ({', '.join(RAW_COLUMNS)}) VALUES ({placeholders})"
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        started = time.perf_counter()
        async with raw.transaction():
            await raw.executemany(sql, records)
        return time.perf_counter() - started


def raw_records(feed: str, company_id: str) -> list[tuple[Any, ...]]:
    naive = NOW.replace(tzinfo=None)  # UTCDateTime stores naive UTC
    parsed = parse_feed(feed)
    return [
        (*(r.values[c] for c in COLUMNS), str(uuid.uuid4()), company_id, r.line_number, naive, naive, 0)
        for r in parsed.rows
    ]


async def bench(url: str, rows: int, rounds: int) -> dict[str, Any]:
    await upgrade(url)
    engine = create_engine(url)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "sessions.csv"
            feed = make_feed(rows)
            path.write_text(feed, encoding="utf-8")
            company = Company(
                id=str(uuid.uuid4()),
                name="bench",
                csv_url=path.as_uri(),
                csv_username=None,
                csv_password_ref=None,
                status=CompanyStatus.ACTIVE,
                timezone="Europe/Amsterdam",
                default_model=None,
                created_at=NOW,
                updated_at=NOW,
            )
            async with engine.begin() as conn:
                await conn.execute(
                    companies.insert().values(
                        id=company.id,
                        name=company.name,
                        csv_url=company.csv_url,
                        status=str(company.status),
                        timezone=company.timezone,
                        created_at=NOW,
                        updated_at=NOW,
                    )
                )
                version = await conn.scalar(text("SHOW server_version"))
            records = raw_records(feed, company.id)
            seconds: dict[str, list[float]] = {"import": [], "raw": []}
            for round_no in range(rounds):
                for mode in ("import", "raw") if round_no % 2 == 0 else ("raw", "import"):
                    await reset(engine)
                    if mode == "import":
                        elapsed = await run_import(engine, company, rows)
                    else:
                        elapsed = await run_raw(engine, records)
                    assert await count(engine) == rows
                    seconds[mode].append(elapsed)
                    print(f"round {round_no + 1} {mode:6s} {elapsed:6.2f} s  {rows / elapsed:9.0f} rows/s", flush=True)
    finally:
        await engine.dispose()
    median = {mode: statistics.median(values) for mode, values in seconds.items()}
    return {
        "server_version": version,
        "import": {
            "rows_per_s": round(rows / median["import"], 1),
            "seconds": [round(s, 3) for s in seconds["import"]],
        },
        "raw": {"rows_per_s": round(rows / median["raw"], 1), "seconds": [round(s, 3) for s in seconds["raw"]]},
        "ratio": round(median["raw"] / median["import"], 3),
        "feed_bytes": len(feed.encode()),
    }


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def main() -> None:
    parser = argparse.ArgumentParser(description="CSV import into PostgreSQL vs raw executemany")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    url = create_database(ADMIN_URL)
    print(f"database {make_url(url).database}, {args.rows} rows, {args.rounds} rounds", flush=True)
    started = time.perf_counter()
    try:
        figures = anyio.run(bench, url, args.rows, args.rounds)
    finally:
        drop_database(ADMIN_URL, url)
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.csv_import" + (f" --rows {args.rows}" if args.rows != 100_000 else ""),
        "machine": machine(),
        "config": {"rows": args.rows, "rounds": args.rounds, "rows_per_statement": ImportSettings().rows_per_statement},
        "postgresql": figures,
        "targets": {"ratio_ge_0.5": figures["ratio"] >= 0.5},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "load_average_1m": os.getloadavg()[0],
    }
    print(
        f"import {figures['import']['rows_per_s']:.0f} rows/s, raw executemany {figures['raw']['rows_per_s']:.0f} "
        f"rows/s, ratio {figures['ratio']:.2f} (target >= 0.5)"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "csv_import.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
