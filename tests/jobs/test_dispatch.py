"""The dispatcher against a loopback callback server: batches per URL, one record per fire, catch-up, fencing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import anyio
import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs import store
from jobs.delivery import DeliveryResult
from jobs.dispatch import CLAIMS, Dispatcher, DispatchSettings, DueFire, Outcome, iso
from jobs.model import JobIn, ProjectIn
from jobs.retention import purge_beyond_count, purge_older_than
from jobs.tables import executions, jobs
from jobs.targets import TargetPolicy
from services.http_jobs import next_fire
from storage.claims import claim_batch
from storage.engine import create_engine
from storage.migrate import upgrade
from tests.jobs.callback_server import CallbackServer

pytestmark = pytest.mark.anyio
LOOPBACK = TargetPolicy.from_entries(["127.0.0.1/32"])


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    await upgrade(db_url)
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def server() -> Iterator[CallbackServer]:
    with CallbackServer() as srv:
        yield srv


async def make_jobs(engine: AsyncEngine, urls: list[str], count: int, behind: int = 3, **fields: object) -> datetime:
    """``count`` ``@every 1s`` jobs per URL whose next fire is ``behind`` seconds ago; returns their anchor."""
    project = await store.create_project(engine, ProjectIn(name="p"))
    for url in urls:
        items = [JobIn.model_validate({"spec": "@every 1s", "callback_url": url, **fields}) for _ in range(count)]
        await store.create_jobs(engine, project["id"], items, next_fire)
    anchor = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=behind + 1)
    async with engine.begin() as conn:
        await conn.execute(update(jobs).values(anchor_at=anchor, next_fire_at=anchor + timedelta(seconds=1)))
    return anchor


def dispatcher(
    engine: AsyncEngine, client: httpx.AsyncClient, policy: TargetPolicy = LOOPBACK, **kw: float
) -> Dispatcher:
    settings = DispatchSettings(**kw)  # type: ignore[arg-type]
    return Dispatcher(
        engine, client, node="n1", next_fire=next_fire, policy=policy, now=lambda: datetime.now(UTC), settings=settings
    )


async def test_every_due_fire_delivered_and_recorded_once_grouped_by_url(
    engine: AsyncEngine, server: CallbackServer
) -> None:
    urls = [server.url, server.url + "?other"]
    anchor = await make_jobs(engine, urls, 30)
    async with httpx.AsyncClient() as client:
        report = await dispatcher(engine, client).drain("owner-1", lambda: True)
    started = datetime.now(UTC)
    raw, by_job = server.snapshot()
    assert len(by_job) == 60 and report.failed == 0
    assert all(n == 1 for n in raw.values()), "a fire was POSTed twice"
    for fires in by_job.values():  # contiguous from the first missed fire up to now: none missing
        times = sorted(datetime.fromisoformat(f) for f in fires)
        assert times[0] == anchor + timedelta(seconds=1)
        assert times == [times[0] + timedelta(seconds=k) for k in range(len(times))]
        assert times[-1] > started - timedelta(seconds=2)
    # Each batch sends one request per URL: 60 jobs in one batch -> 2 requests per catch-up round.
    assert server.requests == 2 * (len(raw) // 60)
    async with engine.connect() as conn:
        logged = (await conn.execute(select(func.count()).select_from(executions))).scalar_one()
        status = set((await conn.execute(select(executions.c.status, executions.c.status_code))).all())
        pending = (await conn.execute(select(func.min(jobs.c.next_fire_at)))).scalar_one()
        claimed = (await conn.execute(select(func.count()).where(jobs.c.claimed_by.is_not(None)))).scalar_one()
    assert logged == len(raw) and status == {("succeeded", 200)}
    assert pending > started - timedelta(seconds=1) and claimed == 0


async def test_two_dispatchers_share_the_jobs_without_duplicates(
    engine: AsyncEngine, server: CallbackServer, db_url: str
) -> None:
    await make_jobs(engine, [server.url], 300, behind=2)
    second = create_engine(db_url)
    try:
        async with httpx.AsyncClient() as client, anyio.create_task_group() as tg:
            for owner, eng in (("a", engine), ("b", second)):
                tg.start_soon(dispatcher(eng, client, batch_size=50).drain, owner, lambda: True)
    finally:
        await second.dispose()
    raw, by_job = server.snapshot()
    assert len(by_job) == 300 and max(raw.values()) == 1
    async with engine.connect() as conn:
        logged = (await conn.execute(select(func.count()).select_from(executions))).scalar_one()
        nodes = (await conn.execute(select(func.count(func.distinct(executions.c.job_id))))).scalar_one()
    assert logged == len(raw) and nodes == 300


async def test_failed_and_refused_deliveries_are_logged_and_the_job_moves_on(engine: AsyncEngine) -> None:
    with CallbackServer(status=500) as failing:
        await make_jobs(engine, [failing.url], 2, behind=0, retry_max=1, retry_delay_ms=0)
        async with httpx.AsyncClient() as client:
            report = await dispatcher(engine, client).dispatch_once("o")
        assert report.failed == 2 and failing.requests == 2  # one request, retried once
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(executions.c.status, executions.c.status_code, executions.c.attempt, executions.c.error)
            )
        ).all()
    assert {tuple(r) for r in rows} == {("failed", 500, 2, "HTTP 500")}
    async with engine.begin() as conn:  # due again: the default policy refuses loopback without any request
        await conn.execute(update(jobs).values(next_fire_at=datetime.now(UTC) - timedelta(seconds=5)))
    async with httpx.AsyncClient() as client:
        report = await dispatcher(engine, client, policy=TargetPolicy()).dispatch_once("o")
    async with engine.connect() as conn:
        errors = (await conn.execute(select(executions.c.error).where(executions.c.status_code.is_(None)))).scalars()
        assert [e for e in errors if "refused network" in (e or "")] and report.failed == 2


async def test_a_takeover_fences_out_the_late_recorder(engine: AsyncEngine) -> None:
    await make_jobs(engine, ["http://127.0.0.1:9/cb"], 3, behind=0)
    ids = await claim_batch(engine, CLAIMS, owner="slow", limit=10, lease_seconds=60)
    async with httpx.AsyncClient() as client:
        slow = dispatcher(engine, client)
        fires = await slow._load(ids, "slow")
        async with engine.begin() as conn:  # the lease runs out and another replica claims the jobs
            await conn.execute(update(jobs).values(claimed_until=datetime.now(UTC) - timedelta(seconds=1)))
        assert len(await claim_batch(engine, CLAIMS, owner="fast", limit=10, lease_seconds=60)) == 3
        outcomes = {f.job_id: Outcome(DeliveryResult(True, 200, 1.0, 1, None), 0.0) for f in fires}
        recorded, lost = await slow._record(fires, outcomes, "slow")
    assert (recorded, lost) == (0, 3)
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(executions))).scalar_one() == 0
        assert set((await conn.execute(select(jobs.c.claimed_by))).scalars()) == {"fast"}


async def test_a_job_paused_during_delivery_stays_paused(engine: AsyncEngine, server: CallbackServer) -> None:
    await make_jobs(engine, [server.url], 1, behind=0)
    ids = await claim_batch(engine, CLAIMS, owner="o", limit=10, lease_seconds=60)
    async with httpx.AsyncClient() as client:
        d = dispatcher(engine, client)
        fires: list[DueFire] = await d._load(ids, "o")
        async with engine.begin() as conn:
            await conn.execute(update(jobs).values(enabled=False, next_fire_at=None))
        outcomes = {f.job_id: Outcome(DeliveryResult(True, 200, 1.0, 1, None), 0.0) for f in fires}
        assert await d._record(fires, outcomes, "o") == (1, 0)
    async with engine.connect() as conn:
        row = (await conn.execute(select(jobs.c.next_fire_at, jobs.c.claimed_by))).one()
    assert tuple(row) == (None, None)
    assert fires[0].fire_id == f"{fires[0].job_id}@{iso(fires[0].fire_time)}"


async def test_retention_by_age_and_count(engine: AsyncEngine) -> None:
    await make_jobs(engine, ["http://127.0.0.1:9/cb"], 2, behind=0)
    async with engine.connect() as conn:
        job_ids = list((await conn.execute(select(jobs.c.id, jobs.c.project_id))).all())
    now = datetime.now(UTC)
    rows = [
        {
            "job_id": job_id,
            "project_id": project,
            "fire_time": now - timedelta(minutes=k),
            "status": "succeeded",
            "attempt": 1,
            "node": "n",
            "created_at": now - timedelta(days=k),
        }
        for job_id, project in job_ids
        for k in range(10)
    ]
    async with engine.begin() as conn:
        await conn.execute(executions.insert(), rows)
    assert await purge_older_than(engine, now - timedelta(days=7) - timedelta(hours=1), batch_size=3) == 3
    assert await purge_older_than(engine, now - timedelta(days=7) - timedelta(hours=1), batch_size=3) == 1
    assert await purge_beyond_count(engine, 5) == 6  # 8 left per job -> keep 5 newest
    async with engine.connect() as conn:
        left = (
            await conn.execute(
                select(executions.c.job_id, func.min(executions.c.fire_time)).group_by(executions.c.job_id)
            )
        ).all()
        count = (await conn.execute(select(func.count()).select_from(executions))).scalar_one()
    assert count == 10 and all(oldest >= now - timedelta(minutes=4, seconds=1) for _, oldest in left)
