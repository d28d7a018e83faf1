"""Companies whose CSV feeds are imported: read from a YAML file, stored idempotently by name, listed.

A companies file is a YAML list; every entry names one company::

    - name: Acme Retail
      csv_url: feeds/acme/sessions.csv          # http(s)://, file://, or a path relative to this file
      csv_username: acme                       # optional; Basic auth is sent only with a password too
      csv_password: env:ACME_CSV_PASSWORD      # a secret *reference* (env:NAME or file:/path), never the password
      status: ACTIVE                           # ACTIVE (default), SUSPENDED, TRIAL or ARCHIVED
      timezone: Europe/Amsterdam               # IANA zone the feed's local times are read in (default UTC)
      default_model: gpt-4o-mini               # optional AI model for this company

A relative ``csv_url`` becomes an absolute ``file://`` URL, resolved against the YAML file's directory, so the
file works from any working directory. Every error names the entry (company name, or its position when the
name is missing) and the field; a password given literally is refused without repeating it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from domain.model import CompanyStatus
from domain.secrets import SecretError, validate_reference
from domain.tables import companies
from storage.engine import writer

_KEYS = frozenset({"name", "csv_url", "csv_username", "csv_password", "status", "timezone", "default_model"})
_NAME_MAX = 200


class CompanyFileError(ValueError):
    """A companies file that cannot be used; the message names the file, the company and the field."""


@dataclass(frozen=True, slots=True)
class CompanySpec:
    """A company as configured (no id yet). ``csv_password_ref`` is a reference, never a password."""

    name: str
    csv_url: str
    csv_username: str | None = None
    csv_password_ref: str | None = None
    status: CompanyStatus = CompanyStatus.ACTIVE
    timezone: str = "UTC"
    default_model: str | None = None


@dataclass(frozen=True, slots=True)
class Company:
    """A stored company row."""

    id: str
    name: str
    csv_url: str
    csv_username: str | None
    csv_password_ref: str | None
    status: CompanyStatus
    timezone: str
    default_model: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class UpsertResult:
    inserted: int
    updated: int
    unchanged: int


def load_companies_file(path: str | Path) -> list[CompanySpec]:
    """The companies of a YAML file, validated; CompanyFileError on the first problem."""
    source = Path(path)
    try:
        document = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CompanyFileError(f"{source}: cannot read the companies file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CompanyFileError(f"{source}: not valid YAML: {exc}") from None
    if document is None:
        return []
    if not isinstance(document, list):
        raise CompanyFileError(f"{source}: expected a YAML list of companies, found {type(document).__name__}")
    specs: list[CompanySpec] = []
    seen: set[str] = set()
    for position, entry in enumerate(document, start=1):
        spec = _spec(source, position, entry)
        if spec.name in seen:
            raise CompanyFileError(f"{source}: company {spec.name!r}: name: appears more than once")
        seen.add(spec.name)
        specs.append(spec)
    return specs


def _spec(source: Path, position: int, entry: Any) -> CompanySpec:
    where = f"{source}: company #{position}"
    if not isinstance(entry, dict):
        raise CompanyFileError(f"{where}: expected a mapping of fields, found {type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CompanyFileError(f"{where}: name: required, a non-empty text")
    name = name.strip()
    where = f"{source}: company {name!r}"
    if len(name) > _NAME_MAX:
        raise CompanyFileError(f"{where}: name: longer than {_NAME_MAX} characters")
    unknown = sorted(str(key) for key in entry if key not in _KEYS)
    if unknown:
        raise CompanyFileError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})")

    def text(field: str, *, required: bool = False) -> str | None:
        value = entry.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise CompanyFileError(f"{where}: {field}: required")
            return None
        if not isinstance(value, str):
            raise CompanyFileError(f"{where}: {field}: expected text, found {type(value).__name__}")
        return value.strip()

    csv_url = _absolute_url(source, text("csv_url", required=True) or "", where)
    password_ref: str | None = None
    if "csv_password" in entry and entry["csv_password"] is not None:
        raw = entry["csv_password"]
        try:
            if not isinstance(raw, str):
                raise SecretError("not text")
            password_ref = validate_reference(raw.strip())
        except SecretError:
            # Never echo the value: it may be the very password that should not be in this file.
            raise CompanyFileError(
                f"{where}: csv_password: must be a secret reference (env:VARIABLE or file:/absolute/path); "
                "a password written into the file is refused"
            ) from None
    status_text = text("status") or CompanyStatus.ACTIVE.value
    try:
        status = CompanyStatus(status_text.upper())
    except ValueError:
        allowed = ", ".join(s.value for s in CompanyStatus)
        raise CompanyFileError(f"{where}: status: {status_text!r} is not one of {allowed}") from None
    timezone = text("timezone") or "UTC"
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise CompanyFileError(f"{where}: timezone: {timezone!r} is not an IANA time zone") from None
    return CompanySpec(
        name=name,
        csv_url=csv_url,
        csv_username=text("csv_username"),
        csv_password_ref=password_ref,
        status=status,
        timezone=timezone,
        default_model=text("default_model"),
    )


def _absolute_url(source: Path, value: str, where: str) -> str:
    scheme = urlsplit(value).scheme.lower()
    if scheme in ("http", "https", "file"):
        if scheme == "file" and not urlsplit(value).path.startswith("/"):
            raise CompanyFileError(f"{where}: csv_url: a file:// URL needs an absolute path (or give a plain path)")
        return value
    if scheme and len(scheme) > 1:  # one letter would be a Windows drive, which we treat as a path
        raise CompanyFileError(f"{where}: csv_url: unsupported scheme {scheme!r} (use http, https, file or a path)")
    return (source.parent / value).resolve().as_uri()


async def upsert_companies(engine: AsyncEngine, specs: Iterable[CompanySpec], now: datetime) -> UpsertResult:
    """Insert new companies and update changed ones, matched by name; running it twice changes nothing.

    ``updated_at`` moves only when a field really changed; ``created_at`` (the import order) never does.
    """
    inserted = updated = unchanged = 0
    names = [f.name for f in fields(CompanySpec)]
    async with writer(engine).begin() as conn:
        for spec in specs:
            wanted = {name: getattr(spec, name) for name in names}
            wanted["status"] = str(spec.status)
            current = (await conn.execute(select(companies).where(companies.c.name == spec.name))).mappings().first()
            if current is None:
                await conn.execute(
                    companies.insert().values(id=str(uuid.uuid4()), created_at=now, updated_at=now, **wanted)
                )
                inserted += 1
            elif any(current[name] != value for name, value in wanted.items()):
                await conn.execute(
                    companies.update().where(companies.c.id == current["id"]).values(updated_at=now, **wanted)
                )
                updated += 1
            else:
                unchanged += 1
    return UpsertResult(inserted, updated, unchanged)


async def list_companies(
    engine: AsyncEngine,
    *,
    statuses: Sequence[CompanyStatus] | None = None,
    where: ColumnElement[bool] | None = None,
    limit: int | None = None,
) -> list[Company]:
    """Stored companies in creation order (``created_at``, then ``id``), optionally only some statuses.

    ``where`` and ``limit`` let callers page by (created_at, id) without offsets.
    """
    query = select(companies).order_by(companies.c.created_at, companies.c.id)
    if statuses is not None:
        query = query.where(companies.c.status.in_([str(s) for s in statuses]))
    if where is not None:
        query = query.where(where)
    if limit is not None:
        query = query.limit(limit)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [_company(row) for row in rows]


def _company(row: Any) -> Company:
    return Company(
        id=row["id"],
        name=row["name"],
        csv_url=row["csv_url"],
        csv_username=row["csv_username"],
        csv_password_ref=row["csv_password_ref"],
        status=CompanyStatus(row["status"]),
        timezone=row["timezone"],
        default_model=row["default_model"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
