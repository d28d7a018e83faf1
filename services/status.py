"""Service status and the transitions allowed between them."""

from __future__ import annotations

from enum import StrEnum


class ServiceStatus(StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    ERROR = "ERROR"


_ALLOWED: dict[ServiceStatus, frozenset[ServiceStatus]] = {
    ServiceStatus.STOPPED: frozenset({ServiceStatus.STARTING}),
    ServiceStatus.STARTING: frozenset({ServiceStatus.RUNNING, ServiceStatus.PAUSED, ServiceStatus.ERROR,
                                       ServiceStatus.STOPPED}),
    ServiceStatus.RUNNING: frozenset({ServiceStatus.PAUSED, ServiceStatus.STOPPED, ServiceStatus.ERROR}),
    ServiceStatus.PAUSED: frozenset({ServiceStatus.RUNNING, ServiceStatus.STOPPED, ServiceStatus.ERROR}),
    ServiceStatus.ERROR: frozenset({ServiceStatus.STARTING, ServiceStatus.STOPPED}),
}


class InvalidTransition(RuntimeError):
    def __init__(self, service: str, current: ServiceStatus, wanted: ServiceStatus) -> None:
        super().__init__(f"{service}: cannot go from {current} to {wanted}")
        self.current = current
        self.wanted = wanted


def can_transition(current: ServiceStatus, wanted: ServiceStatus) -> bool:
    return wanted in _ALLOWED[current]
