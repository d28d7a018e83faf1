"""run-history-retention deletes old finished runs in bounded batches and nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from services.clock import FakeClock
from services.retention import RetentionConfig, RunHistoryRetentionService
from services.runs import RunStatus, RunStore, Trigger
from storage.engine import create_engine
from storage.migrate import upgrade

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[RunStore]:
    await upgrade(db_url)
    engine = create_engine(db_url)
    yield RunStore(engine, "node-a")
    await engine.dispose()


async def test_deletes_only_old_finished_runs_in_batches(store: RunStore) -> None:
    clock = FakeClock()
    now = clock.now()
    for age_days in range(1, 41):  # one finished run per day for 40 days
        when = now - timedelta(days=age_days)
        run_id = await store.claim("other", when, attempt=1, trigger=Trigger.SCHEDULE, started_at=when)
        assert run_id is not None
        await store.finish(run_id, RunStatus.SUCCEEDED, finished_at=when, duration=0.1)
    stuck = now - timedelta(days=90)
    assert await store.claim("other", stuck, attempt=1, trigger=Trigger.SCHEDULE, started_at=stuck)
    service = RunHistoryRetentionService(
        "run-history-retention", RetentionConfig(max_age=timedelta(days=30), batch_size=3), store=store, clock=clock
    )
    outcome = await service.run_now()
    assert outcome is RunStatus.SUCCEEDED
    remaining, _ = await store.list_runs("other", limit=100, offset=0)
    ages = sorted((now - r.scheduled_for).days for r in remaining)
    assert ages == [*range(1, 31), 90]  # days 31..40 gone (older than 30 d), the running row kept
    (own,), _ = await store.list_runs("run-history-retention", limit=10, offset=0)
    assert own.items_processed == 10 and own.status == "succeeded"
