"""http-jobs: dispatches users' HTTP cron jobs (see :mod:`jobs.dispatch` for the delivery guarantee).

Each run is a *window*: it drains what is due, sleeps ``poll_interval``, and repeats until ``run_window``
is over or the run loses its lease, so a fire waits at most about ``poll_interval`` (plus the gap between
runs when ``run_window`` is shorter than ``interval``). Any number of instances (``http-jobs``,
``http-jobs-2`` with ``type: http-jobs``) and replicas dispatch in parallel: the jobs table is the work
queue, shared through SKIP LOCKED claims. Execution logs are pruned by age and count per job at most
once per ``log_retention_every``.

This module is also where the jobs package gets its schedule math (:func:`next_fire`,
:func:`check_schedule`): cron with seconds, macros and anchored ``@every``, as the platform's own services.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import Field, field_validator

from jobs.targets import TargetPolicy
from services.base import BaseSchedulerService, RunContext
from services.config import Milliseconds, Seconds, ServiceConfig
from services.registry import register
from services.schedule import Schedule, parse_schedule

if TYPE_CHECKING:
    from jobs.dispatch import Dispatcher


@functools.lru_cache(maxsize=4096)
def _schedule(spec: str, timezone: str) -> Schedule:
    return parse_schedule(spec, timezone)


def check_schedule(spec: str, timezone: str) -> None:
    """Raise ValueError (ScheduleError) naming the bad spec or timezone."""
    _schedule(spec, timezone)


def next_fire(spec: str, timezone: str, after: datetime, anchor: datetime) -> datetime:
    """The first fire strictly after ``after``; ``@every`` counts from ``anchor``."""
    return _schedule(spec, timezone).next_fire(after, anchor)


class HttpJobsConfig(ServiceConfig):
    interval: str = "@every 10s"
    timeout: Milliseconds = timedelta(seconds=60)
    max_retries: int = 0  # a failed window is simply followed by the next one
    run_window: Seconds = timedelta(milliseconds=9500)
    poll_interval: Seconds = timedelta(milliseconds=200)
    batch_size: int = Field(default=1000, ge=1, le=1000)
    parallel_batches: int = Field(default=2, ge=1, le=16)
    claim_lease: Seconds = timedelta(seconds=60)
    max_concurrency: int = Field(default=20, ge=1, le=1000)
    max_request_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    delivery_backoff: float = Field(default=2.0, ge=1.0)
    catch_up_window: Seconds = timedelta(minutes=10)
    # Comma-separated hosts / CIDRs; when set, callbacks may only go there (e.g. "127.0.0.1/32" in tests).
    allowed_targets: list[str] = []
    log_max_age: Seconds = timedelta(days=7)
    log_max_per_job: int = Field(default=1000, ge=1)
    log_retention_every: Seconds = timedelta(hours=1)

    @field_validator("allowed_targets", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_targets")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        TargetPolicy.from_entries(value)
        return value


@register
class HttpJobsService(BaseSchedulerService):
    type_name = "http-jobs"
    display_name = "HTTP Jobs"
    description = "Delivers users' HTTP cron jobs (the /v1 API) in batches; exactly one record per fire."
    config_class = HttpJobsConfig

    _last_retention: float | None = None

    async def run_once(self, ctx: RunContext) -> None:
        assert isinstance(self.config, HttpJobsConfig)
        # Imported on first run: a process that only registers this service never loads httpx or the dispatcher.
        import httpx

        from jobs.dispatch import Dispatcher, DispatchSettings

        cfg = self.config
        owner = f"{self.store.node}:{ctx.run_id}"
        deadline = anyio.current_time() + cfg.run_window.total_seconds()

        def keep_going() -> bool:
            return ctx.still_owner() and anyio.current_time() < deadline

        limits = httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=cfg.max_concurrency)
        async with httpx.AsyncClient(limits=limits, follow_redirects=False) as client:
            dispatcher = Dispatcher(
                self.store.engine,
                client,
                node=self.store.node,
                next_fire=next_fire,
                policy=TargetPolicy.from_entries(cfg.allowed_targets),
                now=ctx.clock.now,
                settings=DispatchSettings(
                    batch_size=cfg.batch_size,
                    lease_seconds=cfg.claim_lease.total_seconds(),
                    max_concurrency=cfg.max_concurrency,
                    max_request_bytes=cfg.max_request_bytes,
                    backoff=cfg.delivery_backoff,
                    misfire_grace=cfg.catch_up_window,
                ),
            )
            failed = [0]
            async with anyio.create_task_group() as tg:
                # Several claim/deliver/record loops per replica: one batch's POST overlaps the next's SQL.
                for lane in range(cfg.parallel_batches):
                    tg.start_soon(self._lane, ctx, cfg, dispatcher, f"{owner}:{lane}", keep_going, deadline, failed)
        ctx.logger.info("recorded %d fire(s), %d failed delivery", ctx.items_processed, failed[0])

    async def _lane(
        self,
        ctx: RunContext,
        cfg: HttpJobsConfig,
        dispatcher: Dispatcher,
        owner: str,
        keep_going: Callable[[], bool],
        deadline: float,
        failed: list[int],
    ) -> None:
        while keep_going():
            report = await dispatcher.drain(owner, keep_going)
            ctx.add_items(report.recorded)
            failed[0] += report.failed
            if report.lost:
                ctx.logger.warning("%d claimed job(s) were taken over before being recorded", report.lost)
            if owner.endswith(":0"):
                await self._retention(ctx, cfg)
            await anyio.sleep(max(0.0, min(cfg.poll_interval.total_seconds(), deadline - anyio.current_time())))

    async def _retention(self, ctx: RunContext, cfg: HttpJobsConfig) -> None:
        now = anyio.current_time()
        if self._last_retention is not None and now - self._last_retention < cfg.log_retention_every.total_seconds():
            return
        self._last_retention = now
        from jobs.retention import purge_beyond_count, purge_older_than

        engine = self.store.engine
        cutoff = ctx.clock.now() - cfg.log_max_age
        aged = 0
        while ctx.still_owner():
            deleted = await purge_older_than(engine, cutoff)
            aged += deleted
            if deleted < 1000:
                break
        counted = await purge_beyond_count(engine, cfg.log_max_per_job)
        if aged or counted:
            ctx.logger.info("execution log retention: %d aged out, %d over the per-job count", aged, counted)
