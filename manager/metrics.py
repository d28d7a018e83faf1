"""Prometheus metrics fed by service events. One registry per manager, so processes and tests never share."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from manager.manager import SchedulerManager
from services.base import BaseSchedulerService
from services.events import Event, NextRunChanged, RunFinished, RunSkipped, RunStarted, StatusChanged
from services.runs import TERMINAL
from services.status import ServiceStatus

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only add noise to every counter

OUTCOMES = sorted(status.value for status in TERMINAL)
# Runs range from milliseconds to an hour (CSV imports, backups); lag should be milliseconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def package_version() -> str:
    try:
        return version("livedash-schedulers")
    except PackageNotFoundError:
        return "0+unknown"


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runs = Counter("scheduler_runs_total", "Finished runs and unrun fire times by outcome.",
                            ["scheduler", "outcome"], registry=r)
        self.duration = Histogram("scheduler_run_duration_seconds", "Run duration (each attempt).",
                                  ["scheduler"], buckets=DURATION_BUCKETS, registry=r)
        self.last_success = Gauge("scheduler_last_success_timestamp_seconds",
                                  "Unix time of the last successful run on this node.", ["scheduler"], registry=r)
        self.next_run = Gauge("scheduler_next_run_timestamp_seconds",
                              "Unix time of the next fire time (0 when not scheduled).", ["scheduler"], registry=r)
        self.in_progress = Gauge("scheduler_runs_in_progress", "Runs executing on this node.",
                                 ["scheduler"], registry=r)
        self.items = Counter("scheduler_items_processed_total", "Work items processed by runs.",
                             ["scheduler"], registry=r)
        self.lag = Histogram("scheduler_lag_seconds", "Run start minus scheduled time.",
                             ["scheduler"], buckets=LAG_BUCKETS, registry=r)
        self.lease_held = Gauge("scheduler_lease_held", "1 while this node holds the service's run lease.",
                                ["scheduler"], registry=r)
        self.status = Gauge("scheduler_status", "1 for the service's current status on this node.",
                            ["scheduler", "status"], registry=r)
        self.restarts = Counter("scheduler_restarts_total", "Automatic restarts by the manager.",
                                ["scheduler"], registry=r)
        build = Gauge("scheduler_build_info", "Build information.", ["version", "python"], registry=r)
        build.labels(version=package_version(), python=platform.python_version()).set(1)

    def attach(self, manager: SchedulerManager) -> None:
        """Follow every service of the manager and count its automatic restarts."""
        for service in manager.services:
            self.watch(service)
        manager.on_restart(lambda name: self.restarts.labels(name).inc())

    def watch(self, service: BaseSchedulerService) -> None:
        """Create every label combination for the service now, then follow its events."""
        name = service.name
        for outcome in OUTCOMES:
            self.runs.labels(name, outcome)
        for status in ServiceStatus:
            self.status.labels(name, status.value).set(1 if status is service.status else 0)
        for metric in (self.duration, self.last_success, self.next_run, self.in_progress, self.items, self.lag,
                       self.lease_held, self.restarts):
            metric.labels(name)
        service.events.subscribe(self.on_event)

    def on_event(self, event: Event) -> None:
        name = event.service
        if isinstance(event, RunStarted):
            self.in_progress.labels(name).inc()
            self.lease_held.labels(name).set(1)
            self.lag.labels(name).observe(event.lag_seconds)
        elif isinstance(event, RunFinished):
            self.in_progress.labels(name).dec()
            self.lease_held.labels(name).set(0)
            self.runs.labels(name, event.outcome).inc()
            self.duration.labels(name).observe(event.duration_seconds)
            self.items.labels(name).inc(event.items_processed)
            if event.outcome == "succeeded":
                self.last_success.labels(name).set(event.at.timestamp())
        elif isinstance(event, RunSkipped):
            self.runs.labels(name, event.outcome).inc(event.count)
        elif isinstance(event, NextRunChanged):
            self.next_run.labels(name).set(event.next_run.timestamp() if event.next_run else 0)
        elif isinstance(event, StatusChanged):
            self.status.labels(name, event.old.value).set(0)
            self.status.labels(name, event.new.value).set(1)
