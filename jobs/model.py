"""Request shapes of the jobs API and their validation; errors name the field (and the item's index).

Schedules are validated by a function passed in (:data:`ScheduleCheck`), so this package stays free of
the services layer: ``services.http_jobs`` supplies the platform's schedule math.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jobs.targets import TargetRefused, callback_host

MAX_BATCH = 1000
MAX_DATA_BYTES = 64 * 1024

# (spec, timezone) -> None, raising ValueError naming the bad spec or timezone.
ScheduleCheck = Callable[[str, str], None]
# (spec, timezone, after, anchor) -> the first fire time strictly after ``after``.
NextFire = Callable[[str, str, datetime, datetime], datetime]


class FieldError(ValueError):
    """Validation failure: ``errors`` is a list of ``{"field": "jobs[3].spec", "message": ...}``."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ProjectIn(_Strict):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=10_000)


class ProjectPatch(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)


class _JobFields(_Strict):
    @field_validator("callback_url", check_fields=False)
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                callback_host(value)
            except TargetRefused as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("data", check_fields=False)
    @classmethod
    def _data_size(cls, value: Any) -> Any:
        if value is not None and len(json.dumps(value)) > MAX_DATA_BYTES:
            raise ValueError(f"data is larger than {MAX_DATA_BYTES} bytes as JSON")
        return value


class JobIn(_JobFields):
    spec: str = Field(min_length=1, max_length=200, examples=["@every 1m", "*/5 * * * * *"])
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    callback_url: str = Field(min_length=1, max_length=2000)
    data: Any = None
    project_id: str | None = Field(default=None, max_length=36)
    timeout_ms: int = Field(default=30_000, ge=100, le=300_000)
    retry_max: int = Field(default=3, ge=0, le=10)
    retry_delay_ms: int = Field(default=1000, ge=0, le=60_000)
    enabled: bool = True
    execution_type: str | None = Field(default=None, pattern="^http$")  # scheduler0 clients send "http"


class JobPatch(_JobFields):
    spec: str | None = Field(default=None, min_length=1, max_length=200)
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    callback_url: str | None = Field(default=None, min_length=1, max_length=2000)
    data: Any = None
    timeout_ms: int | None = Field(default=None, ge=100, le=300_000)
    retry_max: int | None = Field(default=None, ge=0, le=10)
    retry_delay_ms: int | None = Field(default=None, ge=0, le=60_000)
    enabled: bool | None = None


def _errors(exc: ValidationError, prefix: str) -> list[dict[str, str]]:
    out = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"])
        out.append({"field": f"{prefix}{path}" if path else prefix.rstrip(".") or "body", "message": err["msg"]})
    return out


def parse_model(model: type[BaseModel], body: Any, prefix: str = "") -> Any:
    """Validate ``body`` into ``model``; FieldError names every bad field."""
    if not isinstance(body, dict):
        raise FieldError([{"field": prefix.rstrip(".") or "body", "message": "must be a JSON object"}])
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise FieldError(_errors(exc, prefix)) from None


def parse_jobs(body: Any, check: ScheduleCheck) -> tuple[list[JobIn], bool]:
    """One job object or a list of up to MAX_BATCH; returns (jobs, was_a_list). All errors at once."""
    many = isinstance(body, list)
    items = body if many else [body]
    if many and not items:
        raise FieldError([{"field": "body", "message": "an empty list creates nothing"}])
    if len(items) > MAX_BATCH:
        raise FieldError([{"field": "body", "message": f"at most {MAX_BATCH} jobs per request, got {len(items)}"}])
    errors: list[dict[str, str]] = []
    jobs: list[JobIn] = []
    for index, item in enumerate(items):
        prefix = f"[{index}]." if many else ""
        try:
            job: JobIn = parse_model(JobIn, item, prefix)
            check_schedule(check, job.spec, job.timezone, prefix)
            jobs.append(job)
        except FieldError as exc:
            errors.extend(exc.errors)
    if errors:
        raise FieldError(errors)
    return jobs, many


def check_schedule(check: ScheduleCheck, spec: str, timezone: str, prefix: str = "") -> None:
    try:
        check(spec, "UTC")
    except ValueError as exc:
        raise FieldError([{"field": f"{prefix}spec", "message": str(exc)}]) from None
    try:
        check(spec, timezone)
    except ValueError as exc:
        raise FieldError([{"field": f"{prefix}timezone", "message": str(exc)}]) from None
