"""BaseSchedulerService: the schedule loop, run execution and lifecycle that every service shares.

A subclass implements `run_once(ctx)`. Everything else lives here:

* the schedule loop reads the clock once per iteration, computes the next fire time with pure schedule
  math and sleeps until then (a sleep that pause/resume/stop/config changes interrupt);
* a fire time is claimed by inserting its run row (see `services.runs`); a node that loses the insert skips;
* a run is executed in the service's task group, time-boxed by `timeout` (the run is cancelled, not
  abandoned), retried `max_retries` times with exponential backoff, and recorded in the database;
* `failure_threshold` consecutive failed fire times put the service in ERROR, which stops the loop;
* a tick that finds the previous run still going is recorded as skipped; fire times missed while the
  service was down run once (coalesced) when within `misfire_grace`, older ones are recorded as missed.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import MutableMapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, ClassVar

import anyio
from anyio.abc import TaskGroup, TaskStatus

from services.clock import Clock, SystemClock
from services.config import ServiceConfig
from services.coordination import Busy, Coordinator, ExpiredLease, Lease, UnretriedAttempt
from services.events import (
    ConfigUpdated,
    EventBus,
    NextRunChanged,
    RunCancelled,
    RunFailed,
    RunSkipped,
    RunStarted,
    RunSucceeded,
    RunTimedOut,
    StatusChanged,
)
from services.runs import RunStatus, RunStore, ServiceState, Trigger
from services.schedule import Schedule, parse_schedule
from services.status import InvalidTransition, ServiceStatus, can_transition

# How long a shielded bookkeeping write may take while the run around it is being cancelled.
_CLEANUP_TIMEOUT = 10.0
# Back-off of the schedule loop after a database error, so an outage does not spin.
_ERROR_BACKOFF = 1.0
# Outcomes of an attempt that leave the fire time owed a retry when its node died before claiming one.
_RETRYABLE = frozenset({RunStatus.ABANDONED.value, RunStatus.FAILED.value, RunStatus.TIMED_OUT.value})


class ServiceError(RuntimeError):
    """An operation the service cannot do in its current state; the message says why."""


class RunInProgress(ServiceError):
    def __init__(self, service: str, run_id: str | None, where: str = "") -> None:
        super().__init__(f"{service}: a run is already in progress ({run_id}{where})")
        self.run_id = run_id


class LeaseBusy(RunInProgress):
    """The fire time was claimed here, but another node's run of the service still holds the lease."""


class RunLogger(logging.LoggerAdapter[logging.Logger]):
    """Adds the service name and run id to every record, for text and JSON logs alike."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


@dataclass
class _RunHandle:
    """One fire time being executed, across its attempts."""

    scheduled_for: datetime
    trigger: Trigger
    run_id: str | None = None
    attempt: int = 1
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    cancel_reason: str | None = None
    waiting_to_retry: bool = False
    outcome: RunStatus | None = None
    lease: Lease | None = None
    lease_released: bool = False


@dataclass
class RunContext:
    """What a run sees of the machinery around it."""

    run_id: str
    service: str
    scheduled_for: datetime
    attempt: int
    trigger: Trigger
    logger: RunLogger
    clock: Clock
    _handle: _RunHandle
    items_processed: int = 0

    def add_items(self, count: int = 1) -> None:
        """Count work items done; they show up in the run record and `scheduler_items_processed_total`."""
        self.items_processed += count

    def still_owner(self) -> bool:
        """False once this run has been asked to stop (timeout, shutdown, or a lost lease)."""
        lease = self._handle.lease
        return (
            self._handle.cancel_reason is None
            and not self._handle.scope.cancel_called
            and (lease is None or not lease.lost.is_set())
        )

    @property
    def fencing_token(self) -> int | None:
        """The lease token this run holds; include it in writes that must not outlive the lease."""
        return self._handle.lease.token if self._handle.lease else None


@dataclass
class ServiceMetrics:
    """The livedash metrics snapshot, corrected: a true mean duration and a real failure streak."""

    total_runs: int = 0
    successful_runs: int = 0
    failed_runs: int = 0
    skipped_runs: int = 0
    missed_runs: int = 0
    cancelled_runs: int = 0
    last_run_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error_at: datetime | None = None
    last_error: str | None = None
    total_duration: float = 0.0
    consecutive_failures: int = 0
    next_run_at: datetime | None = None

    @property
    def average_run_time(self) -> float:
        """Mean seconds over every finished attempt (success or failure)."""
        finished = self.successful_runs + self.failed_runs + self.cancelled_runs
        return self.total_duration / finished if finished else 0.0

    def to_json(self, status: ServiceStatus) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat().replace("+00:00", "Z") if value else None

        return {
            "totalRuns": self.total_runs,
            "successfulRuns": self.successful_runs,
            "failedRuns": self.failed_runs,
            "skippedRuns": self.skipped_runs,
            "missedRuns": self.missed_runs,
            "cancelledRuns": self.cancelled_runs,
            "lastRunAt": iso(self.last_run_at),
            "lastSuccessAt": iso(self.last_success_at),
            "lastErrorAt": iso(self.last_error_at),
            "lastError": self.last_error,
            "averageRunTime": round(self.average_run_time * 1000, 3),  # ms, as livedash reported it
            "consecutiveFailures": self.consecutive_failures,
            "nextRunAt": iso(self.next_run_at),
            "currentStatus": status.value,
        }


class BaseSchedulerService(ABC):
    """A periodic job with a schedule, a run history in the database and a lifecycle.

    Subclasses set `type_name` (the registry key, e.g. ``csv-import``), `display_name`, optionally a
    `config_class` with their own settings, and implement `run_once`.
    """

    type_name: ClassVar[str]
    display_name: ClassVar[str]
    description: ClassVar[str] = ""
    config_class: ClassVar[type[ServiceConfig]] = ServiceConfig

    def __init__(
        self,
        name: str,
        config: ServiceConfig,
        *,
        store: RunStore,
        clock: Clock | None = None,
        shutdown_grace: float = 30.0,
        coordinator: Coordinator | None = None,
    ) -> None:
        self.name = name
        self.coordinator = coordinator  # None: one process, no leases (unit tests, embedded use)
        self.configured = config  # what start-up configuration says; runtime overrides apply on top
        self.config = config
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.shutdown_grace = shutdown_grace
        self.events = EventBus()
        self.metrics = ServiceMetrics()
        self.log = RunLogger(logging.getLogger(f"services.{name}"), {"service": name})
        self.status_reason: str | None = None
        self._status = ServiceStatus.STOPPED
        self._schedule: Schedule = parse_schedule(config.interval, config.timezone)
        self._anchor: datetime = self.clock.now()
        self._cursor: datetime = self._anchor
        self._paused = False
        self._overrides: dict[str, Any] = {}
        self._current: _RunHandle | None = None
        self._tg: TaskGroup | None = None
        self._idle_scope: anyio.CancelScope | None = None
        self._stop_requested = False
        self._stopped = anyio.Event()
        self._stopped.set()
        if coordinator is not None:
            coordinator.on_expired(name, self._on_expired_lease)
            coordinator.on_state(name, self.sync_state)

    # ------------------------------------------------------------------ the contract for subclasses

    @abstractmethod
    async def run_once(self, ctx: RunContext) -> None:
        """Do one run's work. Raise to fail the run; call `ctx.add_items()` to count work done.

        The run may be cancelled at any await (timeout, shutdown); long loops should check
        `ctx.still_owner()` between items so a half-finished run leaves nothing half-written.
        """

    # ------------------------------------------------------------------ read-only views

    @property
    def status(self) -> ServiceStatus:
        return self._status

    @property
    def schedule(self) -> Schedule:
        return self._schedule

    @property
    def current_run_id(self) -> str | None:
        return self._current.run_id if self._current else None

    @property
    def serving(self) -> bool:
        """True between `serve()` being entered and returning."""
        return not self._stopped.is_set()

    @property
    def retry_pending(self) -> bool:
        """True while a failed run waits out its retry delay."""
        return self._current is not None and self._current.waiting_to_retry

    def next_runs(self, count: int, now: datetime | None = None) -> list[datetime]:
        """The next `count` fire times after now (or after the cursor, whichever is later)."""
        after = max(now or self.clock.now(), self._cursor)
        times: list[datetime] = []
        for _ in range(count):
            after = self._schedule.next_fire(after, self._anchor)
            times.append(after)
        return times

    def health(self) -> dict[str, Any]:
        healthy = (
            self._status in (ServiceStatus.RUNNING, ServiceStatus.PAUSED)
            and self.metrics.consecutive_failures < self.config.failure_threshold
        )
        last = self.metrics.last_success_at
        return {
            "status": self._status.value,
            "healthy": healthy,
            "lastSuccess": last.isoformat().replace("+00:00", "Z") if last else None,
            "consecutiveFailures": self.metrics.consecutive_failures,
            "reason": None if healthy else self.status_reason,
        }

    # ------------------------------------------------------------------ lifecycle

    async def serve(
        self, *, force_update: bool = False, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the service until `stop()` or ERROR. Reports started once it is firing.

        Returns normally when stopped or in ERROR; raises when start-up fails (status ERROR).
        """
        if self._status not in (ServiceStatus.STOPPED, ServiceStatus.ERROR):
            raise InvalidTransition(self.name, self._status, ServiceStatus.STARTING)
        self._stop_requested = False
        self._stopped = anyio.Event()
        self.metrics.consecutive_failures = 0
        self._set_status(ServiceStatus.STARTING)
        try:
            try:
                await self._load_state(force_update)
            except Exception as exc:
                self._set_status(ServiceStatus.ERROR, f"start-up failed: {exc}")
                raise
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._set_status(ServiceStatus.PAUSED if self._paused else ServiceStatus.RUNNING)
                await self._save_state()
                task_status.started()
                await self._schedule_loop()
                await self._drain()
        except Exception as exc:
            if self._status is not ServiceStatus.ERROR:
                self._set_status(ServiceStatus.ERROR, f"crashed: {type(exc).__name__}: {exc}")
            raise
        finally:
            self._tg = None
            self._set_next_run(None)
            if self._status is not ServiceStatus.ERROR and self._status is not ServiceStatus.STOPPED:
                self._set_status(ServiceStatus.STOPPED)
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + _CLEANUP_TIMEOUT
                await self._save_state()
            self._stopped.set()

    async def stop(self, grace: float | None = None) -> None:
        """Stop firing, let an in-flight run finish within `grace` seconds, then cancel it."""
        if self._status is ServiceStatus.ERROR and self._tg is None:
            self._set_status(ServiceStatus.STOPPED)
            await self._save_state()
            return
        if self._stopped.is_set():
            return
        self._stop_requested = True
        if grace is not None:
            self.shutdown_grace = grace
        if self._current is not None and self._current.waiting_to_retry:
            self.cancel_current_run("stopped while waiting to retry")
        self._wake()
        await self._stopped.wait()

    async def pause(self) -> None:
        self._require(ServiceStatus.PAUSED)
        self._paused = True
        self._set_status(ServiceStatus.PAUSED)
        await self._save_state(paused=True)
        self._wake()

    async def resume(self) -> None:
        self._require(ServiceStatus.RUNNING)
        self._paused = False
        # Fire times that fell inside a pause are not owed: the operator asked for them not to run.
        self._cursor = max(self._cursor, self.clock.now())
        self._set_status(ServiceStatus.RUNNING)
        await self._save_state(paused=False, last_fire_at=self._cursor)
        self._wake()

    async def trigger(self) -> str:
        """Start a manual run now and return its id at once; the run goes on in the background."""
        if self._tg is None or self._status not in (ServiceStatus.RUNNING, ServiceStatus.PAUSED):
            raise ServiceError(f"{self.name} is {self._status.value}; start it before triggering a run")
        handle = await self._claim_new(self.clock.now(), Trigger.MANUAL)
        assert handle.run_id is not None
        self._tg.start_soon(self._execute, handle)
        return handle.run_id

    async def run_now(self) -> RunStatus:
        """Run once in the caller's task (the runner's `--once`), with retries; return the outcome."""
        handle = await self._claim_new(self.clock.now(), Trigger.MANUAL)
        await self._execute(handle)
        assert handle.outcome is not None
        return handle.outcome

    async def update_config(self, changes: dict[str, Any]) -> ServiceConfig:
        """Apply runtime changes (validated like start-up config) and persist them as overrides."""
        unknown = set(changes) - ServiceConfig.RUNTIME_FIELDS
        if unknown:
            raise ValueError(
                f"cannot change {', '.join(sorted(unknown))} at runtime; "
                f"changeable: {', '.join(sorted(ServiceConfig.RUNTIME_FIELDS))}"
            )
        new = self.config_class.model_validate({**self.config.model_dump(), **changes})
        state = await self.store.load_state(self.name)
        overrides = {**(state.overrides if state else {}), **new.model_dump(mode="json", include=set(changes))}
        self._apply_config(new)
        self._overrides = overrides
        await self._save_state(overrides=overrides, anchor_at=self._anchor)
        self.events.emit(ConfigUpdated(service=self.name, at=self.clock.now(), changes=dict(changes)))
        self._wake()
        return new

    def sync_state(self, state: ServiceState) -> None:
        """Apply a pause, resume or runtime config change that another replica stored (seen each heartbeat)."""
        if self._tg is None or self._status not in (ServiceStatus.RUNNING, ServiceStatus.PAUSED):
            return
        if state.overrides != self._overrides:
            try:
                config = self.config_class.model_validate({**self.configured.model_dump(), **state.overrides})
            except ValueError as exc:
                self.log.warning("ignoring stored runtime overrides %s: %s", state.overrides, exc)
            else:
                self.log.info("runtime settings changed on another node: %s", state.overrides)
                self._overrides = dict(state.overrides)
                self._apply_config(config, anchor=state.anchor_at or self._anchor)
                self.events.emit(ConfigUpdated(service=self.name, at=self.clock.now(), changes=dict(state.overrides)))
        if state.paused and self._status is ServiceStatus.RUNNING:
            self._paused = True
            self._set_status(ServiceStatus.PAUSED, "paused on another node")
        elif not state.paused and self._status is ServiceStatus.PAUSED:
            self._paused = False
            self._cursor = max(self._cursor, state.last_fire_at or self._cursor, self.clock.now())
            self._set_status(ServiceStatus.RUNNING)
        self._wake()

    # ------------------------------------------------------------------ schedule loop

    async def _load_state(self, force_update: bool) -> None:
        now = self.clock.now()
        state = await self.store.load_state(self.name)
        config = self.configured
        if state and state.overrides and not force_update:
            try:
                config = self.config_class.model_validate({**self.configured.model_dump(), **state.overrides})
            except ValueError as exc:
                self.log.warning("ignoring stored runtime overrides %s: %s", state.overrides, exc)
        if force_update and state and state.overrides:
            self.log.info("SCHEDULER_FORCE_UPDATE: configured values replace runtime overrides %s", state.overrides)
        anchor = state.anchor_at if state and state.anchor_at else await self.store.establish_anchor(self.name, now)
        self._apply_config(config, anchor=anchor)
        self._paused = bool(state and state.paused)
        last_fire = await self.store.last_fire_time(self.name)
        known = [t for t in (last_fire, state.last_fire_at if state else None) if t is not None]
        self._cursor = max(known) if known else now
        orphans = await self.store.close_orphans(
            self.name, at=now, reason="the process running it stopped before recording an outcome"
        )
        if orphans:
            self.log.warning("marked %d run(s) of a previous process on this node as abandoned", orphans)
        overrides: dict[str, Any] = {} if force_update else (state.overrides if state else {})
        self._overrides = overrides
        await self._save_state(overrides=overrides)

    def _apply_config(self, config: ServiceConfig, anchor: datetime | None = None) -> None:
        schedule = parse_schedule(config.interval, config.timezone)
        if anchor is not None:
            self._anchor = anchor
        elif schedule != self._schedule:
            self._anchor = self.clock.now()  # a new rhythm starts now
        self.config = config
        self._schedule = schedule

    async def _schedule_loop(self) -> None:
        while not self._stop_requested and self._status is not ServiceStatus.ERROR:
            if self._status is ServiceStatus.PAUSED:
                self._set_next_run(None)
                await self._idle(None)
                continue
            now = self.clock.now()
            due = self._schedule.next_fire(self._cursor, self._anchor)
            self._set_next_run(due)
            if due > now:
                await self._idle(due)
                continue
            try:
                await self._catch_up(due, now)
            except Exception as exc:
                self.log.error("schedule loop: %s; retrying in %.0fs", exc, _ERROR_BACKOFF)
                await self._idle(now + timedelta(seconds=_ERROR_BACKOFF))

    async def _catch_up(self, due: datetime, now: datetime) -> None:
        """Handle every fire time in (cursor, now]: record the stale ones, run the newest once."""
        grace_edge = now - self.config.misfire_grace
        if due < grace_edge:
            count, last_stale = self._schedule.missed(self._cursor, grace_edge, self._anchor)
            if count and last_stale is not None:
                reason = (
                    f"{count} fire time(s) from {due:%Y-%m-%d %H:%M:%S} to {last_stale:%Y-%m-%d %H:%M:%S} UTC "
                    f"were more than {self.config.misfire_grace.total_seconds():.0f}s late (misfire grace)"
                )
                if await self.store.record(self.name, last_stale, RunStatus.MISSED, reason, at=now):
                    self.metrics.missed_runs += count
                    self.events.emit(
                        RunSkipped(service=self.name, at=now, scheduled_for=last_stale,
                                   outcome=RunStatus.MISSED.value, count=count, reason=reason)
                    )
                    self.log.warning("missed %s", reason)
                self._cursor = last_stale
        count, latest = self._schedule.missed(self._cursor, now, self._anchor)
        if latest is None:
            return
        if count > 1:
            self.log.info("coalescing %d fire times missed within the grace window into one run", count)
        await self._fire(latest)
        self._cursor = latest

    async def _fire(self, scheduled_for: datetime) -> None:
        now = self.clock.now()
        if self._current is not None:
            reason = f"previous run {self._current.run_id} still in progress"
            if await self.store.record(self.name, scheduled_for, RunStatus.SKIPPED, reason, at=now):
                self.metrics.skipped_runs += 1
                self.events.emit(
                    RunSkipped(service=self.name, at=now, scheduled_for=scheduled_for,
                               outcome=RunStatus.SKIPPED.value, count=1, reason=reason)
                )
                self.log.warning("skipped the %s fire: %s", scheduled_for.isoformat(), reason)
            return
        try:
            handle = await self._claim_new(scheduled_for, Trigger.SCHEDULE)
        except LeaseBusy as busy:
            self.metrics.skipped_runs += 1
            self.events.emit(RunSkipped(service=self.name, at=now, scheduled_for=scheduled_for,
                                        outcome=RunStatus.SKIPPED.value, count=1, reason=str(busy)))
            self.log.warning("skipped the %s fire: %s", scheduled_for.isoformat(), busy)
            return
        except RunInProgress:
            self.log.debug("fire time %s already claimed by another node", scheduled_for.isoformat())
            return
        assert self._tg is not None
        self._tg.start_soon(self._execute, handle)

    async def _claim_new(self, scheduled_for: datetime, trigger: Trigger) -> _RunHandle:
        """Reserve the service's single run slot and claim the fire time's first attempt (and the lease).

        With a coordinator, the claim and the lease are one transaction shared by every fire claimed in the
        same event-loop turn: the run starts after a single trip to the database.
        """
        if self._current is not None:
            raise RunInProgress(self.name, self._current.run_id)
        handle = _RunHandle(scheduled_for=scheduled_for, trigger=trigger)
        self._current = handle
        try:
            if self.coordinator is None:
                handle.run_id = await self.store.claim(
                    self.name, scheduled_for, attempt=1, trigger=trigger, started_at=self.clock.now()
                )
                lease: Lease | Busy | None = None
            else:
                row = self.store.claim_row(self.name, scheduled_for, attempt=1, trigger=trigger,
                                           started_at=self.clock.now())
                handle.run_id, lease = await self.coordinator.claim(row)
        finally:
            if handle.run_id is None:
                self._current = None
        if isinstance(lease, Busy):
            where = f" on {lease.holder}" if lease.holder else ""
            raise LeaseBusy(self.name, lease.run_id, where)
        if handle.run_id is None:
            raise RunInProgress(self.name, None)
        handle.lease = lease
        return handle

    async def _quietly(self, work: Any) -> None:
        try:
            await work
        except Exception as exc:
            self.log.warning("bookkeeping write failed: %s", exc)

    async def _idle(self, until: datetime | None) -> None:
        """Sleep until `until` (forever if None); `_wake()` ends the sleep early."""
        with anyio.CancelScope() as scope:
            self._idle_scope = scope
            if until is None:
                await anyio.sleep_forever()
            else:
                await self.clock.sleep_until(until)
        self._idle_scope = None

    def _wake(self) -> None:
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    async def _drain(self) -> None:
        handle = self._current
        if handle is None:
            return
        with anyio.move_on_after(self.shutdown_grace):
            await handle.done.wait()
        if not handle.done.is_set():
            self.cancel_current_run(f"shutdown grace of {self.shutdown_grace:.0f}s elapsed")
            await handle.done.wait()

    def cancel_current_run(self, reason: str) -> None:
        """Cancel the in-flight run (it is recorded as cancelled with `reason`)."""
        if self._current is not None:
            self._current.cancel_reason = reason
            self._current.scope.cancel()

    # ------------------------------------------------------------------ run execution

    async def _execute(self, handle: _RunHandle) -> None:
        """Run one fire time's attempts; owns the service's run slot until it returns."""
        try:
            with handle.scope:
                async with anyio.create_task_group() as guard:
                    if handle.lease is not None:
                        guard.start_soon(self._guard_lease, handle, handle.lease)
                    await self._attempts(handle)
                    guard.cancel_scope.cancel()
        finally:
            if handle.lease is not None and not handle.lease_released:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_TIMEOUT):
                    # Also when lost: the release is fenced by the token (a no-op once another node holds
                    # the lease), and it drops the lease from `held`, which the heartbeat would renew forever.
                    await self._quietly(self.coordinator.release(handle.lease))  # type: ignore[union-attr]
            self._current = None
            handle.done.set()
        if handle.outcome is RunStatus.SUCCEEDED:
            self.metrics.consecutive_failures = 0
        elif handle.outcome in (RunStatus.FAILED, RunStatus.TIMED_OUT):
            await self._count_failure()
        self._wake()

    async def _guard_lease(self, handle: _RunHandle, lease: Lease) -> None:
        """Cancel the run as soon as its lease is lost: a successor may already be running it."""
        reason = await lease.wait_lost()
        self.log.error("lease of %s lost: %s; cancelling run %s", self.name, reason, handle.run_id)
        handle.cancel_reason = f"lease lost: {reason}"
        handle.scope.cancel()

    async def _attempts(self, handle: _RunHandle) -> None:
        """The fire time's attempts: the first (already claimed) and its retries with backoff."""
        while True:
            outcome = await self._attempt(handle)
            handle.outcome = outcome
            if outcome in (RunStatus.SUCCEEDED, RunStatus.CANCELLED):
                return
            if handle.attempt > self.config.max_retries or self._stop_requested:
                return
            delay = self.config.retry_delay * self.config.retry_backoff ** (handle.attempt - 1)
            handle.waiting_to_retry = True
            await self.clock.sleep(delay.total_seconds())
            handle.waiting_to_retry = False
            handle.attempt += 1
            try:
                run_id = await self.store.claim(
                    self.name, handle.scheduled_for, attempt=handle.attempt, trigger=Trigger.RETRY,
                    started_at=self.clock.now(),
                )
                if run_id is not None and handle.lease is not None and self.coordinator is not None:
                    await self.coordinator.set_run(handle.lease, run_id)
            except Exception as exc:
                self.log.error("could not claim retry attempt %d: %s", handle.attempt, exc)
                return
            if run_id is None:
                return  # another node took over this fire time's retries
            handle.run_id = run_id

    # ------------------------------------------------------------------ takeover of a dead node's run

    def _on_expired_lease(self, found: ExpiredLease | UnretriedAttempt) -> None:
        """Called by the coordinator's heartbeat: another node's lease on this service expired, or an attempt
        was closed without the retry it may be owed."""
        if self._tg is None or self._current is not None or self._stop_requested:
            return
        if isinstance(found, UnretriedAttempt) and found.attempt > self.config.max_retries:
            return  # its last attempt: nothing is owed
        self._tg.start_soon(self._take_over, found)

    async def _take_over(self, found: ExpiredLease | UnretriedAttempt) -> None:
        """Take the service's lease, mark a dead node's run abandoned, and retry it here as its next attempt."""
        assert self.coordinator is not None
        if self._current is not None:
            return
        now = self.clock.now()
        handle = _RunHandle(scheduled_for=now, trigger=Trigger.RETRY)
        self._current = handle  # reserve the run slot while we look
        handed_over = False
        try:
            lease = await self.coordinator.acquire(self.name, found.run_id)
            if isinstance(lease, Busy):
                return
            handle.lease = lease
            old = await self.store.get_run(found.run_id) if found.run_id else None
            if isinstance(found, ExpiredLease):
                reason = f"node {found.holder} stopped renewing its lease (it died or lost the database)"
                if old is not None and await self.store.resolve(old.id, RunStatus.ABANDONED, reason, at=now):
                    self._emit_abandoned(old.scheduled_for, reason, now)
                    old = replace(old, status=RunStatus.ABANDONED.value)
            else:
                reason = f"attempt {found.attempt} ended {found.status} and the node that owed its retry is gone"
            # The retry is owed whoever closed the attempt: this takeover, the dead node's own restart
            # (close_orphans), the orphan sweep, or the attempt's failure itself when the node died waiting
            # out the back-off. The unique (service, fire time, attempt) makes sure only one node claims it.
            owed = old is not None and old.status in _RETRYABLE and old.attempt <= self.config.max_retries
            if old is not None and owed and not self._stop_requested:
                handle.scheduled_for, handle.attempt = old.scheduled_for, old.attempt + 1
                run_id = await self.store.claim(self.name, old.scheduled_for, attempt=handle.attempt,
                                                trigger=Trigger.RETRY, started_at=self.clock.now())
                if run_id is not None:
                    handle.run_id = run_id
                    await self.coordinator.set_run(lease, run_id)
                    self.log.warning("took over %s: retrying fire time %s as attempt %d", reason,
                                     old.scheduled_for.isoformat(), handle.attempt)
                    assert self._tg is not None
                    self._tg.start_soon(self._execute, handle)
                    handed_over = True
            if not handed_over:
                await self.coordinator.release(lease)
        except Exception as exc:
            self.log.error("takeover of an expired lease failed: %s", exc)
        finally:
            if not handed_over:
                if handle.lease is not None:
                    self.coordinator.forget(handle.lease)
                self._current = None

    def _emit_abandoned(self, scheduled_for: datetime, reason: str, now: datetime) -> None:
        self.events.emit(RunSkipped(service=self.name, at=now, scheduled_for=scheduled_for,
                                    outcome=RunStatus.ABANDONED.value, count=1, reason=reason))

    async def _count_failure(self) -> None:
        self.metrics.consecutive_failures += 1
        streak = self.metrics.consecutive_failures
        if streak >= self.config.failure_threshold and self._status in (ServiceStatus.RUNNING, ServiceStatus.PAUSED):
            self._set_status(
                ServiceStatus.ERROR,
                f"{streak} consecutive failed runs (threshold {self.config.failure_threshold}); "
                f"last error: {self.metrics.last_error}",
            )
            await self._save_state()

    async def _attempt(self, handle: _RunHandle) -> RunStatus:
        assert handle.run_id is not None
        started = self.clock.now()
        lag = max(0.0, (started - handle.scheduled_for).total_seconds())
        log = RunLogger(self.log.logger, {"service": self.name, "run_id": handle.run_id})
        ctx = RunContext(
            run_id=handle.run_id, service=self.name, scheduled_for=handle.scheduled_for, attempt=handle.attempt,
            trigger=handle.trigger, logger=log, clock=self.clock, _handle=handle,
        )
        base: dict[str, Any] = {"service": self.name, "run_id": handle.run_id, "scheduled_for": handle.scheduled_for,
                "attempt": handle.attempt, "trigger": handle.trigger.value}
        self.metrics.total_runs += 1
        self.metrics.last_run_at = started
        self.events.emit(RunStarted(at=started, lag_seconds=lag, **base))
        log.info("run started (attempt %d, %s, lag %.3fs)", handle.attempt, handle.trigger.value, lag)
        t0 = anyio.current_time()
        timeout = self.config.timeout.total_seconds()
        will_retry = handle.attempt <= self.config.max_retries and not self._stop_requested
        try:
            with anyio.move_on_after(timeout) as timeout_scope:
                await self.run_once(ctx)
        except anyio.get_cancelled_exc_class():
            handle.outcome = RunStatus.CANCELLED
            reason = handle.cancel_reason or "cancelled"
            await self._finish(ctx, RunStatus.CANCELLED, anyio.current_time() - t0, reason)
            self.events.emit(RunCancelled(at=self.clock.now(), duration_seconds=anyio.current_time() - t0,
                                          items_processed=ctx.items_processed, reason=reason, **base))
            log.warning("run cancelled: %s", reason)
            raise
        except Exception as exc:
            duration = anyio.current_time() - t0
            error = f"{type(exc).__name__}: {exc}"
            log.error("run failed after %.3fs: %s%s", duration, error, " (will retry)" if will_retry else "",
                      exc_info=exc)
            await self._finish(ctx, RunStatus.FAILED, duration, error, final=not will_retry)
            self.events.emit(RunFailed(at=self.clock.now(), duration_seconds=duration, error=error,
                                       will_retry=will_retry, items_processed=ctx.items_processed, **base))
            return RunStatus.FAILED
        duration = anyio.current_time() - t0
        if timeout_scope.cancelled_caught or timeout_scope.cancel_called:  # even if run_once swallowed it
            error = f"timed out after {timeout:g}s; the run was cancelled"
            log.error("run %s%s", error, " (will retry)" if will_retry else "")
            await self._finish(ctx, RunStatus.TIMED_OUT, duration, error, final=not will_retry)
            self.events.emit(RunTimedOut(at=self.clock.now(), duration_seconds=duration, error=error,
                                         will_retry=will_retry, items_processed=ctx.items_processed, **base))
            return RunStatus.TIMED_OUT
        await self._finish(ctx, RunStatus.SUCCEEDED, duration, None)
        self.events.emit(RunSucceeded(at=self.clock.now(), duration_seconds=duration,
                                      items_processed=ctx.items_processed, **base))
        log.info("run succeeded in %.3fs (%d items)", duration, ctx.items_processed)
        return RunStatus.SUCCEEDED

    async def _finish(
        self, ctx: RunContext, status: RunStatus, duration: float, error: str | None, *, final: bool = True
    ) -> None:
        """Record the outcome; shielded and time-boxed, so it lands even while the run is being cancelled.

        The last attempt's outcome and the lease release share one transaction.
        """
        now = self.clock.now()
        self.metrics.total_duration += duration
        if status is RunStatus.SUCCEEDED:
            self.metrics.successful_runs += 1
            self.metrics.last_success_at = now
        elif status is RunStatus.CANCELLED:
            self.metrics.cancelled_runs += 1
        else:
            self.metrics.failed_runs += 1
            self.metrics.last_error_at = now
            self.metrics.last_error = error
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + _CLEANUP_TIMEOUT
            handle = ctx._handle
            lease = handle.lease
            fence = (self.name, lease.token) if lease is not None else None
            release = final and lease is not None and not lease.lost.is_set()
            try:
                recorded = await self.store.finish(ctx.run_id, status, finished_at=now, duration=duration,
                                                   items=ctx.items_processed, error=error, fence=fence,
                                                   release_lease=release)
            except Exception as exc:
                ctx.logger.error("could not record the run as %s: %s", status.value, exc)
                return
            if release and lease is not None and self.coordinator is not None:
                handle.lease_released = True
                self.coordinator.forget(lease)
            if not recorded:
                ctx.logger.warning("outcome %s not recorded: the run was taken over (fencing token %s superseded)",
                                   status.value, fence[1] if fence else None)

    # ------------------------------------------------------------------ status bookkeeping

    def _require(self, wanted: ServiceStatus) -> None:
        if not can_transition(self._status, wanted) or self._status is ServiceStatus.STOPPED:
            raise InvalidTransition(self.name, self._status, wanted)

    def _set_status(self, new: ServiceStatus, reason: str | None = None) -> None:
        old = self._status
        if old is new:
            return
        if not can_transition(old, new):
            raise InvalidTransition(self.name, old, new)
        self._status = new
        self.status_reason = reason
        self.events.emit(StatusChanged(service=self.name, at=self.clock.now(), old=old, new=new, reason=reason))
        level = logging.ERROR if new is ServiceStatus.ERROR else logging.INFO
        self.log.log(level, "status %s -> %s%s", old.value, new.value, f": {reason}" if reason else "")

    def _set_next_run(self, when: datetime | None) -> None:
        if when != self.metrics.next_run_at:
            self.metrics.next_run_at = when
            self.events.emit(NextRunChanged(service=self.name, at=self.clock.now(), next_run=when))

    async def _save_state(self, **values: Any) -> None:
        try:
            await self.store.save_state(
                self.name, updated_at=self.clock.now(), status=self._status.value,
                consecutive_failures=self.metrics.consecutive_failures, **values,
            )
        except Exception as exc:
            self.log.error("could not persist service state: %s", exc)
