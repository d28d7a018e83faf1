"""Per-service configuration: the fields every service shares, validated once at start-up."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, field_validator

from services.schedule import ScheduleError, parse_duration, parse_schedule

_NUMBER = re.compile(r"^\s*\d+(\.\d+)?\s*$")


def format_duration(value: timedelta) -> str:
    """The shortest exact human form: 300000 ms -> '5m', 1.5 s -> '1500ms'."""
    ms = round(value.total_seconds() * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _duration_parser(bare_unit: str) -> Any:
    def parse(value: Any) -> Any:
        if isinstance(value, timedelta):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return timedelta(**{bare_unit: value})
        if isinstance(value, str):
            if _NUMBER.match(value):
                return timedelta(**{bare_unit: float(value)})
            try:
                return parse_duration(value.strip())
            except ScheduleError as exc:
                raise ValueError(f"expected a duration such as 1500ms, 30s, 5m, 2h or 3d, got {value!r}") from exc
        raise ValueError(f"expected a duration, got {value!r}")

    return parse


_serialize = PlainSerializer(format_duration, return_type=str)

# Bare numbers keep the original system's meaning: *_TIMEOUT and *_RETRY_DELAY are milliseconds.
Milliseconds = Annotated[timedelta, BeforeValidator(_duration_parser("milliseconds")), _serialize]
Seconds = Annotated[timedelta, BeforeValidator(_duration_parser("seconds")), _serialize]


class ServiceConfig(BaseModel):
    """Settings every service has. Subclasses add their own fields and may change defaults."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = True
    interval: str = "*/5 * * * *"
    timezone: str = "UTC"
    timeout: Milliseconds = timedelta(seconds=30)
    max_retries: int = 2
    retry_delay: Milliseconds = timedelta(seconds=5)
    retry_backoff: float = 2.0
    failure_threshold: int = 3
    misfire_grace: Seconds = timedelta(minutes=5)
    critical: bool = True
    auto_start: bool = True

    # Only these may be changed at runtime through the admin API (and then persist across restarts).
    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"interval", "timezone", "timeout", "max_retries", "retry_delay", "retry_backoff",
         "failure_threshold", "misfire_grace"}
    )

    @field_validator("max_retries", "failure_threshold")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 or more")
        return value

    @field_validator("retry_backoff")
    @classmethod
    def _backoff(cls, value: float) -> float:
        if value < 1:
            raise ValueError("must be 1 or more (1 = constant delay)")
        return value

    @field_validator("interval")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            parse_schedule(value)
        except ScheduleError as exc:
            raise ValueError(str(exc)) from exc
        return value.strip()

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            parse_schedule("@hourly", value)
        except ScheduleError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive")
        return value

    @field_validator("failure_threshold")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be 1 or more")
        return value
