"""Real processes: two session-processing replicas share 2,000 pending sessions on PostgreSQL and analyse each
exactly once; and the service runs through ``python -m runner --scheduler=session-processing --once``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from sqlalchemy import func, select

from bench.analysis import audit, collect, seed, start_workers, wait_ready
from domain.tables import ai_processing_requests, processing_status, session_questions
from storage.engine import create_engine
from storage.migrate import upgrade
from tests.support.processes import Proc, base_env, free_port

NOW = datetime(2025, 5, 1, tzinfo=UTC)


async def _prepare(url: str, count: int, empty_every: int = 0) -> None:
    await upgrade(url)
    engine = create_engine(url)
    try:
        await seed(engine, count, now=NOW, empty_every=empty_every)
    finally:
        await engine.dispose()


async def _audit(url: str) -> tuple[dict[str, int], int, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            links = (await conn.execute(select(func.count()).select_from(session_questions))).scalar_one()
            rows = (await conn.execute(select(func.count()).select_from(ai_processing_requests))).scalar_one()
        return await audit(engine), int(links), int(rows)
    finally:
        await engine.dispose()


@pytest.mark.postgresql
def test_two_replicas_analyse_each_session_exactly_once(postgres_url: str, tmp_path: Path) -> None:
    anyio.run(_prepare, postgres_url, 2000)
    procs, go = start_workers(postgres_url, 2, chunk=50, tmp=tmp_path)
    try:
        wait_ready(procs, tmp_path, timeout=60)
        go.write_text("go")  # both released together, so their claims really interleave
        reports = collect(procs, tmp_path, timeout=120)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    checked, links, requests = anyio.run(_audit, postgres_url)
    assert checked == {"completed": 2000, "requests": 2000, "not_once": 0, "left": 0}
    assert requests == 2000  # no failed or duplicate cost rows either
    assert links == 500 * (2 + 1 + 2 + 1)  # questions per chat (en, de, nl, fr), each linked once
    analysed = [r["analysed"] for r in reports]
    assert sum(analysed) == 2000 and all(n > 0 for n in analysed), analysed  # both replicas did real work
    assert all(r["lost"] == 0 for r in reports)


def test_runner_once_runs_the_service(sqlite_url: str, tmp_path: Path) -> None:
    anyio.run(_prepare, sqlite_url, 40, 10)
    env = base_env(
        DATABASE_URL=sqlite_url,
        SCHEDULER_PLUGINS="services.session_processing",
        SESSION_PROCESSING_BATCH_SIZE="0",
        SESSION_PROCESSING_PROVIDER="local",
    )
    proc = Proc(["runner", "--scheduler=session-processing", "--once"], env, free_port(), tmp_path, "runner")
    try:
        assert proc.wait_exit(timeout=60) == 0, proc.log.read_text()
    finally:
        proc.close()

    async def stages() -> dict[str, int]:
        engine = create_engine(sqlite_url)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(processing_status.c.status, func.count())
                    .where(processing_status.c.stage == "AI_ANALYSIS")
                    .group_by(processing_status.c.status)
                )
                return {str(status): int(n) for status, n in rows}
        finally:
            await engine.dispose()

    assert anyio.run(stages) == {"COMPLETED": 36, "SKIPPED": 4}
