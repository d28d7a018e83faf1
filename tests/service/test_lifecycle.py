"""BaseSchedulerService behaviour on a real (SQLite) database with an injected clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from services.base import BaseSchedulerService, RunContext, RunInProgress, ServiceError
from services.clock import FakeClock
from services.config import ServiceConfig
from services.events import Event, RunFinished, RunSkipped, RunStarted, StatusChanged
from services.runs import RunRecord, RunStore
from services.status import InvalidTransition, ServiceStatus
from storage.engine import create_engine
from storage.migrate import upgrade
from tests.support.wait import until

pytestmark = pytest.mark.anyio


class Scripted(BaseSchedulerService):
    """Each run takes the next behaviour from a script: 'ok', 'fail', 'hang' or 'block'."""

    type_name = "scripted"
    display_name = "Scripted"

    def __init__(self, *args: Any, script: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.script = script
        self.release = anyio.Event()
        self.cancelled_inside = 0

    async def run_once(self, ctx: RunContext) -> None:
        behaviour = self.script.pop(0) if self.script else "ok"
        if behaviour == "fail":
            raise RuntimeError("scripted failure")
        if behaviour in ("hang", "block"):
            try:
                if behaviour == "hang":
                    await anyio.sleep_forever()
                await self.release.wait()
            except anyio.get_cancelled_exc_class():
                self.cancelled_inside += 1
                raise
        ctx.add_items(2)


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[RunStore]:
    await upgrade(sqlite_url)
    engine = create_engine(sqlite_url)
    yield RunStore(engine, "node-a")
    await engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


Factory = Callable[..., Scripted]


@pytest.fixture
def make(store: RunStore, clock: FakeClock) -> Factory:
    def factory(script: list[str] | None = None, name: str = "job", **config: Any) -> Scripted:
        settings = ServiceConfig.model_validate({"interval": "@every 60s", "max_retries": 0, **config})
        return Scripted(name, settings, store=store, clock=clock, script=list(script or []), shutdown_grace=5)

    return factory


@asynccontextmanager
async def serving(service: BaseSchedulerService, force_update: bool = False) -> AsyncIterator[TaskGroup]:
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: service.serve(force_update=force_update, task_status=task_status))
        try:
            yield tg
        finally:
            with anyio.fail_after(10):
                await service.stop()


async def runs_of(store: RunStore, name: str = "job") -> list[RunRecord]:
    records, _ = await store.list_runs(name, limit=1000, offset=0)
    return sorted(records, key=lambda r: (r.scheduled_for, r.attempt))


async def wait_runs(store: RunStore, predicate: Callable[[list[RunRecord]], bool], what: str) -> list[RunRecord]:
    async def check() -> list[RunRecord] | None:
        records = await runs_of(store)
        return records if predicate(records) else None

    result: list[RunRecord] = await until(check, what=what)
    return result


def _finished_at_least(count: int) -> Callable[[list[RunRecord]], bool]:
    return lambda records: sum(r.status != "running" for r in records) >= count


def finished(status: str, count: int = 1) -> Callable[[list[RunRecord]], bool]:
    return lambda records: sum(r.status == status for r in records) >= count


async def test_fires_on_schedule_and_records_the_run(make: Factory, store: RunStore, clock: FakeClock) -> None:
    service = make()
    events: list[Event] = []
    service.events.subscribe(events.append)
    start = clock.now()
    async with serving(service):
        assert service.status is ServiceStatus.RUNNING
        assert service.metrics.next_run_at == start + timedelta(seconds=60)
        clock.advance(60)
        (run,) = await wait_runs(store, finished("succeeded"), "first run")
    assert run.scheduled_for == start + timedelta(seconds=60)
    assert run.trigger == "schedule"
    assert run.attempt == 1
    assert run.items_processed == 2
    assert run.lag_seconds == 0.0
    assert run.node == "node-a"
    assert service.metrics.successful_runs == 1
    kinds = [type(e).__name__ for e in events if isinstance(e, RunStarted | RunFinished)]
    assert kinds == ["RunStarted", "RunSucceeded"]
    assert service.status is ServiceStatus.STOPPED


async def test_failed_run_is_retried_with_backoff(make: Factory, store: RunStore, clock: FakeClock) -> None:
    service = make(["fail", "fail", "ok"], max_retries=2, retry_delay="10s", retry_backoff=2)
    async with serving(service):
        clock.advance(60)
        await wait_runs(store, finished("failed"), "first attempt to fail")
        await until(lambda: service.retry_pending, what="the retry wait")
        clock.advance(9.9)  # not yet: the first retry waits 10 s
        await anyio.wait_all_tasks_blocked()
        assert service.retry_pending
        assert len(await runs_of(store)) == 1
        clock.advance(0.1)
        await wait_runs(store, finished("failed", 2), "second attempt to fail")
        await until(lambda: service.retry_pending, what="the second retry wait")
        clock.advance(19.9)  # the second retry waits 10 s x 2
        await anyio.wait_all_tasks_blocked()
        assert service.retry_pending
        assert len(await runs_of(store)) == 2
        clock.advance(0.1)
        records = await wait_runs(store, finished("succeeded"), "third attempt to succeed")
    assert [(r.attempt, r.trigger, r.status) for r in records] == [
        (1, "schedule", "failed"), (2, "retry", "failed"), (3, "retry", "succeeded")]
    assert len({r.scheduled_for for r in records}) == 1
    starts = [r.started_at for r in records]
    assert starts[1] - starts[0] == timedelta(seconds=10)  # type: ignore[operator]
    assert starts[2] - starts[1] == timedelta(seconds=20)  # type: ignore[operator]
    assert "RuntimeError: scripted failure" in (records[0].error or "")
    assert service.metrics.consecutive_failures == 0  # the fire time succeeded in the end


async def test_timeout_cancels_the_run(make: Factory, store: RunStore) -> None:
    service = make(["hang"], timeout="200ms")
    async with serving(service):
        run_id = await service.trigger()
        (run,) = await wait_runs(store, finished("timed_out"), "the run to time out")
    assert run.id == run_id
    assert service.cancelled_inside == 1  # the work itself saw the cancellation, it was not just abandoned
    assert "timed out after 0.2s" in (run.error or "")
    assert run.duration_seconds is not None and 0.2 <= run.duration_seconds < 5


async def test_failure_streak_puts_service_in_error_and_stops_firing(
    make: Factory, store: RunStore, clock: FakeClock
) -> None:
    service = make(["fail"] * 10, failure_threshold=3)
    async with serving(service):
        for count in (1, 2, 3):
            clock.advance(60)
            await wait_runs(store, finished("failed", count), f"failure {count}")
        await until(lambda: not service.serving, what="the loop to stop in ERROR")
        assert service.status is ServiceStatus.ERROR
        assert "3 consecutive failed runs" in (service.status_reason or "")
        assert service.health()["healthy"] is False
        clock.advance(600)  # ten more fire times pass...
        assert clock.sleepers == 0  # ...with nothing waiting to fire them
        assert len(await runs_of(store)) == 3
        state = await store.load_state("job")
        assert state is not None and state.status == "ERROR"


async def test_streak_is_consecutive_not_cumulative(make: Factory, store: RunStore, clock: FakeClock) -> None:
    # The original counted failed-minus-successful runs; a real streak resets on success.
    service = make(["fail", "fail", "ok", "fail", "fail"], failure_threshold=3)
    async with serving(service):
        for count in range(1, 6):
            clock.advance(60)
            await wait_runs(store, _finished_at_least(count), f"run {count}")
        assert service.status is ServiceStatus.RUNNING
        assert service.metrics.consecutive_failures == 2


async def test_overlapping_tick_is_skipped_and_recorded(make: Factory, store: RunStore, clock: FakeClock) -> None:
    service = make(["block"])
    skipped: list[RunSkipped] = []
    service.events.subscribe(lambda e: skipped.append(e) if isinstance(e, RunSkipped) else None)
    start = clock.now()
    async with serving(service):
        clock.advance(60)
        (first,) = await wait_runs(store, finished("running"), "the first run to start")
        clock.advance(60)
        records = await wait_runs(store, finished("skipped"), "the overlapping tick to be skipped")
        service.release.set()
        records = await wait_runs(store, finished("succeeded"), "the first run to finish")
    by_time = {r.scheduled_for: r for r in records}
    assert by_time[start + timedelta(seconds=60)].status == "succeeded"
    skip = by_time[start + timedelta(seconds=120)]
    assert skip.status == "skipped"
    assert first.id in (skip.error or "")
    assert [s.outcome for s in skipped] == ["skipped"]
    assert service.metrics.skipped_runs == 1


async def test_missed_fire_times_are_coalesced_or_recorded(make: Factory, store: RunStore, clock: FakeClock) -> None:
    start = clock.now()
    first = make(misfire_grace="5m")
    async with serving(first):
        clock.advance(60)
        await wait_runs(store, finished("succeeded"), "the run before the outage")
    clock.advance(1200)  # down for 20 minutes: fire times start+120 ... start+1260
    second = make(misfire_grace="5m")
    async with serving(second):
        records = await wait_runs(store, finished("succeeded", 2), "the coalesced catch-up run")
        missed = [r for r in records if r.status == "missed"]
        ran = [r for r in records if r.status == "succeeded"]
        # Older than the 5-minute grace (start+120 ... start+960): one record naming all 15.
        assert len(missed) == 1
        assert missed[0].scheduled_for == start + timedelta(seconds=960)
        assert "15 fire time(s)" in (missed[0].error or "")
        # Within the grace (start+1020 ... start+1260): one run, at the newest fire time.
        assert [r.scheduled_for for r in ran] == [start + timedelta(seconds=60), start + timedelta(seconds=1260)]
        assert second.metrics.missed_runs == 15
        assert second.metrics.next_run_at == start + timedelta(seconds=1320)
        clock.advance(60)
        records = await wait_runs(store, finished("succeeded", 3), "the next on-time run")
    assert len(records) == 4  # no burst of catch-up runs


async def test_interval_keeps_its_rhythm_across_restarts(make: Factory, store: RunStore, clock: FakeClock) -> None:
    start = clock.now()
    async with serving(make(interval="@every 3d")):
        pass
    clock.advance(3600 * 30)  # restarted 30 hours later
    again = make(interval="@every 3d")
    async with serving(again):
        assert again.metrics.next_run_at == start + timedelta(days=3)


async def test_pause_and_resume_persist(make: Factory, store: RunStore, clock: FakeClock) -> None:
    service = make()
    async with serving(service):
        await service.pause()
        assert service.status is ServiceStatus.PAUSED
        clock.advance(180)
        assert await runs_of(store) == []
        with pytest.raises(InvalidTransition):
            await service.pause()
    restarted = make()
    async with serving(restarted):
        assert restarted.status is ServiceStatus.PAUSED  # the pause survived the restart
        clock.advance(120)
        await restarted.resume()
        assert await runs_of(store) == []  # fire times inside the pause are not owed
        clock.advance(60)
        await wait_runs(store, finished("succeeded"), "the first run after resume")
    state = await store.load_state("job")
    assert state is not None and state.paused is False


async def test_runtime_overrides_persist_unless_force_update(make: Factory, store: RunStore, clock: FakeClock) -> None:
    service = make()
    async with serving(service):
        await service.update_config({"interval": "@every 10s", "timeout": "5s"})
        assert service.config.interval == "@every 10s"
        with pytest.raises(ValueError, match="cannot change enabled at runtime"):
            await service.update_config({"enabled": False})
        with pytest.raises(ValueError, match="invalid schedule"):
            await service.update_config({"interval": "61 * * * *"})
    restarted = make()
    async with serving(restarted):
        assert restarted.config.interval == "@every 10s"
        assert restarted.config.timeout == timedelta(seconds=5)
    forced = make()
    async with serving(forced, force_update=True):
        assert forced.config.interval == "@every 60s"
    state = await store.load_state("job")
    assert state is not None and state.overrides == {}


async def test_stop_drains_then_cancels_after_grace(make: Factory, store: RunStore) -> None:
    service = make(["block"])
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: service.serve(task_status=task_status))
        await service.trigger()
        with pytest.raises(RunInProgress):
            await service.trigger()
        await service.stop(grace=0.1)
    (run,) = await runs_of(store)
    assert run.status == "cancelled"
    assert "shutdown grace" in (run.error or "")
    assert service.cancelled_inside == 1
    assert service.status is ServiceStatus.STOPPED


async def test_stop_lets_a_short_run_finish(make: Factory, store: RunStore) -> None:
    service = make(["block"])
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: service.serve(task_status=task_status))
        await service.trigger()
        tg.start_soon(service.stop, 10.0)
        await until(lambda: service._stop_requested, what="stop to begin")
        service.release.set()
    (run,) = await runs_of(store)
    assert run.status == "succeeded"


async def test_trigger_requires_a_started_service(make: Factory) -> None:
    with pytest.raises(ServiceError, match="start it before triggering"):
        await make().trigger()


async def test_status_events_follow_valid_transitions(make: Factory) -> None:
    service = make()
    changes: list[tuple[str, str]] = []
    service.events.subscribe(
        lambda e: changes.append((e.old.value, e.new.value)) if isinstance(e, StatusChanged) else None
    )
    async with serving(service):
        await service.pause()
        await service.resume()
    assert changes == [("STOPPED", "STARTING"), ("STARTING", "RUNNING"), ("RUNNING", "PAUSED"),
                       ("PAUSED", "RUNNING"), ("RUNNING", "STOPPED")]
