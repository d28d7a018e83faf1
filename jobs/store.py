"""Database operations behind the jobs API: projects, credentials, jobs and execution logs.

Every function takes ``project`` = the caller's project id, or None for the admin (all projects); a row of
another project is reported as not found, so a key never learns what other projects hold.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from jobs.credentials import hash_secret, new_api_key, new_secret, verify_secret
from jobs.model import JobIn, JobPatch, NextFire, ProjectIn, ProjectPatch
from jobs.tables import credentials, executions, jobs, projects


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: Any) -> Any:
    return value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value


def _json(row: Mapping[Any, Any], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: _iso(v) for k, v in row.items() if k not in drop}


def _scoped(table: Table, project: str | None, column: str = "project_id") -> list[ColumnElement[bool]]:
    return [] if project is None else [table.c[column] == project]


# ---------------------------------------------------------------------------------------------- projects


async def create_project(engine: AsyncEngine, body: ProjectIn) -> dict[str, Any]:
    now = _now()
    row = {
        "id": str(uuid.uuid4()),
        "name": body.name,
        "description": body.description,
        "created_at": now,
        "updated_at": now,
    }
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(projects).values(row))
    except IntegrityError:
        raise Conflict(f"a project named {body.name!r} already exists") from None
    return _json(row)


async def list_projects(engine: AsyncEngine, project: str | None, limit: int, offset: int) -> tuple[list[Any], int]:
    where = _scoped(projects, project, "id")
    async with engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(projects).where(*where))).scalar_one()
        rows = await conn.execute(
            select(projects).where(*where).order_by(projects.c.created_at, projects.c.id).limit(limit).offset(offset)
        )
        return [_json(r._mapping) for r in rows], int(total)


async def get_project(engine: AsyncEngine, project: str | None, project_id: str) -> dict[str, Any]:
    if project is not None and project != project_id:
        raise NotFound(f"project {project_id} not found")
    async with engine.connect() as conn:
        row = (await conn.execute(select(projects).where(projects.c.id == project_id))).first()
    if row is None:
        raise NotFound(f"project {project_id} not found")
    return _json(row._mapping)


async def update_project(
    engine: AsyncEngine, project: str | None, project_id: str, body: ProjectPatch
) -> dict[str, Any]:
    await get_project(engine, project, project_id)
    values: dict[str, Any] = body.model_dump(exclude_none=True)
    if values:
        values["updated_at"] = _now()
        try:
            async with engine.begin() as conn:
                await conn.execute(update(projects).where(projects.c.id == project_id).values(values))
        except IntegrityError:
            raise Conflict(f"a project named {body.name!r} already exists") from None
    return await get_project(engine, project, project_id)


async def delete_project(engine: AsyncEngine, project: str | None, project_id: str) -> None:
    await get_project(engine, project, project_id)
    async with engine.begin() as conn:
        # Children first: not every engine enforces ON DELETE CASCADE (SQLite without the pragma).
        job_ids = select(jobs.c.id).where(jobs.c.project_id == project_id).scalar_subquery()
        await conn.execute(delete(executions).where(executions.c.job_id.in_(job_ids)))
        await conn.execute(delete(jobs).where(jobs.c.project_id == project_id))
        await conn.execute(delete(credentials).where(credentials.c.project_id == project_id))
        await conn.execute(delete(projects).where(projects.c.id == project_id))


# ---------------------------------------------------------------------------------------------- credentials


async def create_credential(engine: AsyncEngine, project_id: str) -> dict[str, Any]:
    """A new key pair; the returned ``secret`` is the only time it is ever shown."""
    await get_project(engine, None, project_id)
    secret = new_secret()
    row = {
        "id": str(uuid.uuid4()),
        "project_id": project_id,
        "api_key": new_api_key(),
        "secret_hash": hash_secret(secret),
        "created_at": _now(),
        "revoked_at": None,
    }
    async with engine.begin() as conn:
        await conn.execute(insert(credentials).values(row))
    return {**_json(row, drop=("secret_hash",)), "secret": secret}


async def list_credentials(engine: AsyncEngine, project_id: str) -> list[dict[str, Any]]:
    await get_project(engine, None, project_id)
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(credentials).where(credentials.c.project_id == project_id).order_by(credentials.c.created_at)
        )
        return [_json(r._mapping, drop=("secret_hash",)) for r in rows]


async def revoke_credential(engine: AsyncEngine, credential_id: str) -> dict[str, Any]:
    async with engine.begin() as conn:
        result = await conn.execute(
            update(credentials)
            .where(credentials.c.id == credential_id, credentials.c.revoked_at.is_(None))
            .values(revoked_at=_now())
        )
        row = (await conn.execute(select(credentials).where(credentials.c.id == credential_id))).first()
    if row is None:
        raise NotFound(f"credential {credential_id} not found")
    del result
    return _json(row._mapping, drop=("secret_hash",))


async def authenticate(engine: AsyncEngine, api_key: str, secret: str) -> str | None:
    """The project of a live key pair, or None (unknown key, wrong secret and revoked key look the same)."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(credentials.c.project_id, credentials.c.secret_hash).where(
                    credentials.c.api_key == api_key, credentials.c.revoked_at.is_(None)
                )
            )
        ).first()
    if row is None:
        verify_secret(secret, "pbkdf2_sha256$20000$00$00")  # same work either way: no timing oracle on keys
        return None
    return str(row.project_id) if verify_secret(secret, row.secret_hash) else None


# ---------------------------------------------------------------------------------------------- jobs

_JOB_OUT = ("claimed_by", "claimed_until")


async def create_jobs(
    engine: AsyncEngine, project_id: str, items: list[JobIn], next_fire: NextFire
) -> list[dict[str, Any]]:
    """Insert all jobs in one transaction (all or none). ``@every`` jobs are anchored at creation."""
    await get_project(engine, None, project_id)
    now = _now()
    rows = []
    for item in items:
        rows.append(
            {
                "id": str(uuid.uuid4()),
                "project_id": project_id,
                "spec": item.spec,
                "timezone": item.timezone,
                "callback_url": item.callback_url,
                "data": item.data,
                "timeout_ms": item.timeout_ms,
                "retry_max": item.retry_max,
                "retry_delay_ms": item.retry_delay_ms,
                "enabled": item.enabled,
                "anchor_at": now,
                "next_fire_at": next_fire(item.spec, item.timezone, now, now) if item.enabled else None,
                "claimed_by": None,
                "claimed_until": None,
                "created_at": now,
                "updated_at": now,
            }
        )
    async with engine.begin() as conn:
        await conn.execute(insert(jobs), rows)
    return [_json(r, drop=_JOB_OUT) for r in rows]


async def list_jobs(
    engine: AsyncEngine,
    project: str | None,
    *,
    limit: int,
    offset: int,
    enabled: bool | None = None,
    callback_url: str | None = None,
) -> tuple[list[dict[str, Any]], int]:
    where = _scoped(jobs, project)
    if enabled is not None:
        where.append(jobs.c.enabled.is_(enabled))
    if callback_url is not None:
        where.append(jobs.c.callback_url == callback_url)
    cols = [c for c in jobs.c if c.name not in _JOB_OUT]
    async with engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(jobs).where(*where))).scalar_one()
        rows = await conn.execute(
            select(*cols).where(*where).order_by(jobs.c.created_at, jobs.c.id).limit(limit).offset(offset)
        )
        return [_json(r._mapping) for r in rows], int(total)


async def get_job(engine: AsyncEngine, project: str | None, job_id: str) -> dict[str, Any]:
    cols = [c for c in jobs.c if c.name not in _JOB_OUT]
    async with engine.connect() as conn:
        row = (await conn.execute(select(*cols).where(jobs.c.id == job_id, *_scoped(jobs, project)))).first()
    if row is None:
        raise NotFound(f"job {job_id} not found")
    return dict(row._mapping)


async def update_job(
    engine: AsyncEngine, project: str | None, job_id: str, patch: JobPatch, next_fire: NextFire
) -> dict[str, Any]:
    """Apply the given fields. A new spec re-anchors the job; a new spec, timezone or resume recomputes the
    next fire from now; pausing clears it (a dispatch in flight then leaves it cleared)."""
    current = await get_job(engine, project, job_id)
    values: dict[str, Any] = patch.model_dump(
        exclude_unset=True, exclude={"data"} if "data" not in patch.model_fields_set else set()
    )
    values = {k: v for k, v in values.items() if v is not None or k == "data"}
    now = _now()
    spec = values.get("spec", current["spec"])
    timezone = values.get("timezone", current["timezone"])
    enabled = values.get("enabled", current["enabled"])
    anchor = now if "spec" in values and spec != current["spec"] else current["anchor_at"]
    rescheduled = spec != current["spec"] or timezone != current["timezone"]
    if not enabled:
        values["next_fire_at"] = None
    elif rescheduled or not current["enabled"]:
        values["anchor_at"] = anchor
        values["next_fire_at"] = next_fire(spec, timezone, now, anchor)
    values["updated_at"] = now
    async with engine.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id == job_id).values(values))
    return _json(await get_job(engine, project, job_id))


async def delete_job(engine: AsyncEngine, project: str | None, job_id: str) -> None:
    await get_job(engine, project, job_id)
    async with engine.begin() as conn:
        await conn.execute(delete(executions).where(executions.c.job_id == job_id))
        await conn.execute(delete(jobs).where(jobs.c.id == job_id))


async def list_executions(
    engine: AsyncEngine,
    project: str | None,
    *,
    job_id: str | None = None,
    project_id: str | None = None,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    where = _scoped(executions, project)
    if job_id is not None:
        await get_job(engine, project, job_id)
        where.append(executions.c.job_id == job_id)
    if project_id is not None:
        await get_project(engine, project, project_id)
        where.append(executions.c.project_id == project_id)
    async with engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(executions).where(*where))).scalar_one()
        rows = await conn.execute(
            select(executions)
            .where(*where)
            .order_by(executions.c.fire_time.desc(), executions.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return [_json(r._mapping) for r in rows], int(total)


to_json = _json
