"""SchedulerManager supervision: restarts with increasing delay, a restart budget, aggregated health."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import anyio
import httpx
import pytest

from manager.http import AdminApp, create_app
from manager.manager import RestartPolicy, SchedulerManager
from manager.metrics import SchedulerMetrics
from services.base import BaseSchedulerService, RunContext
from services.clock import FakeClock
from services.config import ServiceConfig
from services.runs import RunStore, ServiceState
from services.status import ServiceStatus
from storage.engine import create_engine
from storage.migrate import upgrade
from tests.support.wait import until

pytestmark = pytest.mark.anyio


class AlwaysFails(BaseSchedulerService):
    type_name = "always-fails"
    display_name = "Always fails"

    async def run_once(self, ctx: RunContext) -> None:
        raise RuntimeError("boom")


class Healthy(BaseSchedulerService):
    type_name = "healthy"
    display_name = "Healthy"

    async def run_once(self, ctx: RunContext) -> None:
        ctx.add_items(1)


class FlakyStore(RunStore):
    """A store whose state load fails the first `failures` times: a service that crashes at start-up."""

    def __init__(self, inner: RunStore, failures: int) -> None:
        super().__init__(inner.engine, inner.node)
        self.failures = failures

    async def load_state(self, scheduler: str) -> ServiceState | None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("database went away")
        return await super().load_state(scheduler)


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[RunStore]:
    await upgrade(sqlite_url)
    engine = create_engine(sqlite_url)
    yield RunStore(engine, "node-a")
    await engine.dispose()


def config(**values: Any) -> ServiceConfig:
    return ServiceConfig.model_validate({"interval": "@every 60s", "max_retries": 0, **values})


async def test_service_in_error_is_restarted_until_the_budget_is_spent(store: RunStore) -> None:
    clock = FakeClock()
    failing = AlwaysFails("failing", config(failure_threshold=1), store=store, clock=clock)
    fine = Healthy("fine", config(), store=store, clock=clock)
    restarts: list[str] = []
    manager = SchedulerManager(
        [failing, fine], policy=RestartPolicy(max_restarts=2, delay=timedelta(seconds=5)), clock=clock
    )
    manager.on_restart(restarts.append)
    metrics = SchedulerMetrics()
    metrics.attach(manager)
    admin = AdminApp(manager, metrics, store, admin_token=None, ping=anyio.lowlevel.checkpoint)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(admin)), base_url="http://test")

    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        assert (await client.get("/api/admin/schedulers/health")).status_code == 200

        clock.advance(60)  # first failure -> ERROR
        await until(lambda: manager.get("failing").restarts == 1, what="the first restart to be scheduled")
        assert failing.status is ServiceStatus.ERROR
        clock.advance(4.9)  # the first restart waits 5 s
        await anyio.wait_all_tasks_blocked()
        assert failing.status is ServiceStatus.ERROR and restarts == []
        clock.advance(0.1)
        await until(lambda: failing.status is ServiceStatus.RUNNING, what="the first restart")
        assert restarts == ["failing"]

        clock.advance(60)  # fails again -> second restart after 10 s (the delay doubles)
        await until(lambda: manager.get("failing").restarts == 2, what="the second restart to be scheduled")
        clock.advance(9.9)
        await anyio.wait_all_tasks_blocked()
        assert failing.status is ServiceStatus.ERROR
        clock.advance(0.1)
        await until(lambda: failing.status is ServiceStatus.RUNNING, what="the second restart")

        clock.advance(60)  # third failure: the budget of 2 restarts is spent
        await until(lambda: manager.get("failing").gave_up is not None, what="the manager to give up")
        assert failing.status is ServiceStatus.ERROR
        response = await client.get("/api/admin/schedulers/health")
        assert response.status_code == 503
        body = response.json()
        assert body["healthy"] is False and body["schedulers"] == {"total": 2, "running": 1, "errors": 1}
        reason = body["details"]["failing"]["reason"]
        assert "restart budget of 2 exhausted" in reason and "boom" in reason
        assert body["details"]["fine"]["healthy"] is True
        head = await client.head("/api/admin/schedulers/health")
        assert head.status_code == 503 and head.content == b""

        clock.advance(600)
        assert restarts == ["failing", "failing"]
        metrics_text = (await client.get("/metrics")).text
        assert 'scheduler_restarts_total{scheduler="failing"} 2.0' in metrics_text
        assert 'scheduler_status{scheduler="failing",status="ERROR"} 1.0' in metrics_text
        manager.request_shutdown()
    await client.aclose()
    assert fine.status is ServiceStatus.STOPPED


async def test_service_that_crashes_at_start_up_is_restarted(store: RunStore) -> None:
    clock = FakeClock()
    flaky = FlakyStore(store, failures=2)
    service = Healthy("flaky", config(), store=flaky, clock=clock)
    manager = SchedulerManager([service], policy=RestartPolicy(max_restarts=3, delay=timedelta(seconds=1)),
                               clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        assert service.status is ServiceStatus.ERROR
        assert "start-up failed" in (service.status_reason or "")
        clock.advance(1)
        await until(lambda: manager.get("flaky").restarts == 2, what="the second restart to be scheduled")
        clock.advance(2)
        await until(lambda: service.status is ServiceStatus.RUNNING, what="the service to come up")
        clock.advance(60)
        # A success refills the restart budget.
        await until(lambda: manager.get("flaky").restarts == 0, what="a successful run to reset the budget")
        assert service.metrics.successful_runs == 1
        manager.request_shutdown()


async def test_non_critical_service_is_not_restarted(store: RunStore) -> None:
    clock = FakeClock()
    service = AlwaysFails("optional", config(failure_threshold=1, critical=False), store=store, clock=clock)
    manager = SchedulerManager([service], clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        clock.advance(60)
        await until(lambda: manager.get("optional").gave_up is not None, what="the manager to leave it")
        assert "not restarted automatically" in (manager.get("optional").gave_up or "")
        # An operator can still start it again by hand.
        await manager.start("optional")
        assert service.status is ServiceStatus.RUNNING
        manager.request_shutdown()


async def test_standalone_mode_exits_1_when_its_service_is_gone(store: RunStore) -> None:
    clock = FakeClock()
    service = AlwaysFails("only", config(failure_threshold=1), store=store, clock=clock)
    manager = SchedulerManager([service], policy=RestartPolicy(enabled=False), clock=clock, exit_when_down=True)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(manager.run)
            clock.advance(60)
    assert manager.exit_code == 1


async def test_no_services_is_healthy(store: RunStore) -> None:
    health = SchedulerManager([]).health()
    assert health["healthy"] is True and health["schedulers"]["total"] == 0
