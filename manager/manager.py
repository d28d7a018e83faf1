"""SchedulerManager: runs services in one task group, restarts critical ones, aggregates health."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from services.base import BaseSchedulerService, ServiceError
from services.clock import Clock, SystemClock
from services.events import Event, RunSucceeded
from services.registry import UnknownService
from services.status import ServiceStatus

log = logging.getLogger("manager")


@dataclass
class RestartPolicy:
    enabled: bool = True
    max_restarts: int = 3
    delay: timedelta = timedelta(seconds=5)

    def delay_for(self, attempt: int) -> float:
        """Seconds before restart number `attempt` (1-based): the delay doubles each time, capped at 5 min."""
        return float(min(self.delay.total_seconds() * 2 ** (attempt - 1), 300.0))


class _Ready:
    """A TaskStatus that tells `start()` the service is up (or has given up: see `_supervise`)."""

    def __init__(self, event: anyio.Event) -> None:
        self.event = event

    def started(self, value: object = None) -> None:
        self.event.set()


@dataclass
class Registration:
    service: BaseSchedulerService
    restarts: int = 0
    gave_up: str | None = None  # why the manager stopped restarting it
    supervised: bool = False
    stop_requested: bool = False
    wait_scope: anyio.CancelScope | None = None
    settled: anyio.Event = field(default_factory=anyio.Event)

    @property
    def critical(self) -> bool:
        return self.service.config.critical


class SchedulerManager:
    def __init__(
        self,
        services: Iterable[BaseSchedulerService],
        *,
        policy: RestartPolicy | None = None,
        autostart: bool = True,
        force_update: bool = False,
        shutdown_grace: float = 30.0,
        clock: Clock | None = None,
        exit_when_down: bool = False,
    ) -> None:
        self.registrations: dict[str, Registration] = {}
        for service in services:
            if service.name in self.registrations:
                raise ValueError(f"two services are named {service.name!r}")
            self.registrations[service.name] = Registration(service)
            service.events.subscribe(self._on_event)
        self.policy = policy or RestartPolicy()
        self.autostart = autostart
        self.force_update = force_update
        self.shutdown_grace = shutdown_grace
        self.clock = clock or SystemClock()
        self.exit_when_down = exit_when_down  # the standalone runner exits when its one service is gone
        self.exit_code = 0
        self.started = False
        self.draining = False
        self._tg: TaskGroup | None = None
        self._shutdown = anyio.Event()
        self.stopped = anyio.Event()  # set once run() has stopped every service
        self._restart_listeners: list[Any] = []

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the auto-start services, serve until `request_shutdown()`, then drain and stop them all."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if self.autostart:
                await self.start_all()
            self.started = True
            task_status.started()
            await self._shutdown.wait()
            await self.stop_all(self.shutdown_grace)
        self._tg = None
        self.stopped.set()

    def request_shutdown(self, exit_code: int = 0) -> None:
        """Begin a graceful shutdown: readiness fails at once, services drain within the grace period."""
        if not self._shutdown.is_set():
            self.draining = True
            self.exit_code = max(self.exit_code, exit_code)
            self._shutdown.set()

    def on_restart(self, listener: Any) -> None:
        """Call `listener(service_name)` whenever the manager restarts a service (for metrics)."""
        self._restart_listeners.append(listener)

    # ------------------------------------------------------------------ operations

    def get(self, name: str) -> Registration:
        try:
            return self.registrations[name]
        except KeyError:
            raise UnknownService(name, list(self.registrations)) from None

    @property
    def services(self) -> list[BaseSchedulerService]:
        return [registration.service for registration in self.registrations.values()]

    async def start(self, name: str) -> None:
        registration = self.get(name)
        if registration.supervised:
            raise ServiceError(f"{name} is already {registration.service.status.value}")
        if self._tg is None:
            raise ServiceError("the manager is not running")
        if self.draining:
            raise ServiceError("the process is shutting down")
        registration.restarts = 0
        registration.gave_up = None
        registration.stop_requested = False
        registration.supervised = True
        registration.settled = anyio.Event()
        self._tg.start_soon(self._supervise, registration)
        await registration.settled.wait()

    async def stop(self, name: str, grace: float | None = None) -> None:
        registration = self.get(name)
        registration.stop_requested = True
        if registration.wait_scope is not None:
            registration.wait_scope.cancel()  # abandon a pending automatic restart
        await registration.service.stop(self.shutdown_grace if grace is None else grace)

    async def pause(self, name: str) -> None:
        await self.get(name).service.pause()

    async def resume(self, name: str) -> None:
        await self.get(name).service.resume()

    async def trigger(self, name: str) -> str:
        return await self.get(name).service.trigger()

    async def start_all(self) -> None:
        """Start every auto-start service at once: a hundred services must not queue their start-up reads."""
        async with anyio.create_task_group() as tg:
            for name, registration in self.registrations.items():
                if registration.service.config.auto_start and not registration.supervised:
                    tg.start_soon(self.start, name)

    async def stop_all(self, grace: float | None = None) -> None:
        async with anyio.create_task_group() as tg:
            for name in self.registrations:
                tg.start_soon(self.stop, name, grace)

    # ------------------------------------------------------------------ supervision

    async def _supervise(self, registration: Registration) -> None:
        service = registration.service
        try:
            while True:
                ready = _Ready(registration.settled)
                failure: BaseException | None = None
                try:
                    await service.serve(force_update=self.force_update, task_status=ready)
                except Exception as exc:
                    failure = exc
                    log.error("%s crashed: %s", service.name, exc, exc_info=exc)
                finally:
                    registration.settled.set()
                if registration.stop_requested or self.draining or service.status is not ServiceStatus.ERROR:
                    return
                reason = service.status_reason or (str(failure) if failure else "unknown")
                if not (registration.critical and self.policy.enabled):
                    registration.gave_up = f"in ERROR and not restarted automatically: {reason}"
                    break
                if registration.restarts >= self.policy.max_restarts:
                    registration.gave_up = (
                        f"restart budget of {self.policy.max_restarts} exhausted; last error: {reason}"
                    )
                    log.error("%s: %s", service.name, registration.gave_up)
                    break
                registration.restarts += 1
                delay = self.policy.delay_for(registration.restarts)
                log.warning("%s is in ERROR (%s); restart %d/%d in %.1fs", service.name, reason,
                            registration.restarts, self.policy.max_restarts, delay)
                with anyio.CancelScope() as scope:
                    registration.wait_scope = scope
                    await self.clock.sleep(delay)
                registration.wait_scope = None
                if scope.cancelled_caught or registration.stop_requested or self.draining:
                    return
                for listener in self._restart_listeners:
                    listener(service.name)
        finally:
            registration.supervised = False
            registration.settled.set()
        if self.exit_when_down:
            self.request_shutdown(exit_code=1)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, RunSucceeded):
            # A success proves the restart worked: the budget is for consecutive restarts without one.
            self.registrations[event.service].restarts = 0

    # ------------------------------------------------------------------ health

    def health(self) -> dict[str, Any]:
        """The livedash health shape, plus a reason for every unhealthy service."""
        details: dict[str, Any] = {}
        running = errors = 0
        for name, registration in self.registrations.items():
            entry = registration.service.health()
            entry["restarts"] = registration.restarts
            if registration.gave_up:
                entry["reason"] = registration.gave_up
            details[name] = entry
            status = registration.service.status
            running += status in (ServiceStatus.RUNNING, ServiceStatus.PAUSED)
            errors += status is ServiceStatus.ERROR
        # Unlike the original, zero services is not an error: nothing is failing.
        healthy = errors == 0
        return {
            "healthy": healthy,
            "status": "healthy" if healthy else "unhealthy",
            "timestamp": self.clock.now().isoformat().replace("+00:00", "Z"),
            "schedulers": {"total": len(self.registrations), "running": running, "errors": errors},
            "details": details,
        }
