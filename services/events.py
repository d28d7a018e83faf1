"""Typed events a service emits; subscribers (metrics, logs, tests) receive them synchronously."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.status import ServiceStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Event:
    service: str
    at: datetime


@dataclass(frozen=True, kw_only=True)
class StatusChanged(Event):
    old: ServiceStatus
    new: ServiceStatus
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunEvent(Event):
    run_id: str
    scheduled_for: datetime
    attempt: int
    trigger: str


@dataclass(frozen=True, kw_only=True)
class RunStarted(RunEvent):
    lag_seconds: float


@dataclass(frozen=True, kw_only=True)
class RunFinished(RunEvent):
    """Base of the terminal run events; `outcome` is the RunStatus value recorded in the database."""

    outcome: str
    duration_seconds: float
    items_processed: int = 0


@dataclass(frozen=True, kw_only=True)
class RunSucceeded(RunFinished):
    outcome: str = "succeeded"


@dataclass(frozen=True, kw_only=True)
class RunFailed(RunFinished):
    outcome: str = "failed"
    error: str
    will_retry: bool


@dataclass(frozen=True, kw_only=True)
class RunTimedOut(RunFinished):
    outcome: str = "timed_out"
    error: str
    will_retry: bool


@dataclass(frozen=True, kw_only=True)
class RunCancelled(RunFinished):
    outcome: str = "cancelled"
    reason: str


@dataclass(frozen=True, kw_only=True)
class RunSkipped(Event):
    """A fire time or attempt without a result: `skipped` (a run was still going), `missed` (past the
    misfire grace) or `abandoned` (the node running it stopped renewing its lease)."""

    scheduled_for: datetime
    outcome: str
    count: int
    reason: str


@dataclass(frozen=True, kw_only=True)
class NextRunChanged(Event):
    next_run: datetime | None


@dataclass(frozen=True, kw_only=True)
class ConfigUpdated(Event):
    changes: dict[str, Any] = field(default_factory=dict)


Subscriber = Callable[[Event], None]


class EventBus:
    """Fan-out to subscribers. A failing subscriber is logged and never breaks the service that emitted."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def emit(self, event: Event) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("event subscriber %r failed on %s", subscriber, type(event).__name__)
