"""One process: services under a manager, the HTTP app, signal handling. The runner is this with one service."""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine

from manager.config import Config
from manager.http import AdminApp, create_app
from manager.manager import RestartPolicy, SchedulerManager
from manager.metrics import SchedulerMetrics, package_version
from manager.server import bind, serve_http
from services.base import BaseSchedulerService
from services.clock import Clock
from services.coordination import Coordinator, DatabaseAlignedClock
from services.registry import get_type
from services.runs import RunStore
from storage.engine import ping

log = logging.getLogger("manager")


@dataclass
class Platform:
    """Everything one process runs, wired together but not started."""

    config: Config
    engine: AsyncEngine
    store: RunStore
    coordinator: Coordinator
    manager: SchedulerManager
    metrics: SchedulerMetrics
    admin: AdminApp


def build(config: Config, *, only: str | None = None, clock: Clock | None = None) -> Platform:
    """Wire the services named in config (or just `only`) to one engine, manager, metrics and HTTP app."""
    settings = config.platform
    engine = config.storage.create_engine()
    store = RunStore(engine, settings.node_id)
    aligned = DatabaseAlignedClock(offset=settings.scheduler_clock_offset)
    coordinator = Coordinator(
        engine, settings.node_id, lock_ttl=settings.scheduler_lock_ttl.total_seconds(),
        heartbeat_interval=settings.scheduler_heartbeat_interval.total_seconds(), clock=aligned,
        version=package_version(),
    )
    clock = clock or aligned
    grace = settings.scheduler_shutdown_grace.total_seconds()
    specs = [config.service(only)] if only else [spec for spec in config.services if spec.config.enabled]
    services: list[BaseSchedulerService] = [
        get_type(spec.type_name)(spec.name, spec.config, store=store, clock=clock, shutdown_grace=grace,
                                 coordinator=coordinator)
        for spec in specs
    ]
    manager = SchedulerManager(
        services,
        policy=RestartPolicy(
            enabled=settings.scheduler_auto_restart,
            max_restarts=settings.scheduler_max_restarts,
            delay=settings.scheduler_restart_delay,
        ),
        autostart=settings.scheduler_enabled,
        force_update=settings.scheduler_force_update,
        shutdown_grace=grace,
        clock=clock,
        exit_when_down=only is not None,
    )
    metrics = SchedulerMetrics()
    metrics.attach(manager)
    token = settings.scheduler_admin_token.get_secret_value() if settings.scheduler_admin_token else None
    admin = AdminApp(manager, metrics, store, admin_token=token, ping=lambda: ping(engine))
    return Platform(config, engine, store, coordinator, manager, metrics, admin)


async def serve(platform: Platform, *, host: str, port: int) -> int:
    """Run until SIGTERM/SIGINT (drain) or a second signal (cancel at once). Returns the exit code."""
    sock = bind(host, port)
    manager = platform.manager
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_signals, manager, tg.cancel_scope)
            ttl = platform.config.platform.scheduler_lock_ttl.total_seconds()
            server = await tg.start(serve_http, create_app(platform.admin, node_ttl=ttl), sock)
            # The coordinator starts first (the clock is aligned before anything fires) and stops last:
            # leases are renewed until every in-flight run has finished or been cancelled.
            await tg.start(platform.coordinator.run)
            log.info("admin HTTP on http://%s:%d (dashboard: /, health: /api/admin/schedulers/health)", host,
                     sock.getsockname()[1])
            if platform.admin.admin_token is None:
                log.warning("admin actions (trigger, pause, ...) are disabled: set SCHEDULER_ADMIN_TOKEN to enable")
            await manager.run()
            server.should_exit = True
            tg.cancel_scope.cancel()  # stop the signal watcher; uvicorn has already closed
    finally:
        with anyio.CancelScope(shield=True):
            await platform.engine.dispose()
        sock.close()
    log.info("stopped (exit code %d)", manager.exit_code)
    return manager.exit_code


async def _watch_signals(manager: SchedulerManager, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not manager.draining:
                log.info("%s: draining (no new runs, in-flight runs get %.0fs); send it again to exit at once",
                         name, manager.shutdown_grace)
                manager.request_shutdown()
            else:
                log.warning("second %s: cancelling in-flight runs now", name)
                for service in manager.services:
                    service.shutdown_grace = 0
                    service.cancel_current_run(f"cancelled by a second {name}")
                scope.deadline = anyio.current_time() + 5  # a last bound on the cleanup writes
