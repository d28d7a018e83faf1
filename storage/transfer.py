"""Move scheduler data between databases, and in and out of a JSON state file.

**Copying a database** (``python -m manager migrate-storage --from URL --to URL``), e.g. SQLite to PostgreSQL
when one machine is no longer enough, or any other direction among sqlite, postgresql and mysql::

    counts = await copy_storage("sqlite:///./var/scheduler.db", "postgresql://u:p@db:5432/scheduler")

The target is migrated to head first; the source must already be at head. A target that already holds scheduler
rows is refused unless ``overwrite=True`` (then its rows are deleted first). Every table of
``storage.schema.metadata`` (plus tables other modules register there) is copied in dependency order, in batches
read by keyset pagination on the primary key (memory stays bounded by ``batch_size`` rows), each table inside one
target transaction, and the source is read inside one snapshot so the copy is consistent. Leases are copied
*released* (no holder, no run, no expiry) with their fencing token kept, so tokens only ever grow. Finally the
row count of every table is compared between source and target. Stop the schedulers on both sides first: rows
written to the source after the copy started are not copied (runs still ``running`` at that moment are copied as
they are and logged as a warning). A copy that fails half-way leaves the tables copied so far in the target: fix
the cause and run it again with ``overwrite=True``.

**The JSON state file** is what :func:`export_state` writes and :func:`import_legacy_state` reads, and the
format of the legacy JSON storage (``storage.path: .visor/schedules.json``) that is imported automatically on
first start::

    {
      "format": "livedash-schedulers-state",          # required, exactly this
      "version": 1,                                   # required, exactly 1
      "exported_at": "2025-01-31T12:00:00.000000Z",   # optional, informational
      "services": {                                   # optional; one entry per service instance
        "run-history-retention": {
          "paused": false,                            # optional, default false
          "overrides": {"interval": "@every 10m"},    # optional object or null: runtime config changes
          "anchor_at": "2025-01-01T00:00:00Z",        # optional timestamp or null: origin of @every intervals
          "last_fire_at": null                        # optional timestamp or null
        }
      },
      "runs": [                                       # optional; one entry per run attempt
        {
          "id": "0b6c...-uuid",                       # optional (<= 36 chars); derived from the fire time if absent
          "scheduler": "run-history-retention",       # required (<= 100 chars)
          "scheduled_for": "2025-01-31T11:17:00Z",    # required timestamp
          "attempt": 1,                               # optional, default 1
          "trigger": "schedule",                      # optional: schedule (default) | manual | retry
          "status": "succeeded",                      # required: running | succeeded | failed | timed_out |
                                                      #   cancelled | skipped | missed | abandoned
          "node": "host-123",                         # optional, default "legacy-import"
          "started_at": "...", "finished_at": "...",  # optional timestamps or null
          "duration_seconds": 0.25, "lag_seconds": 0.001,   # optional numbers or null
          "items_processed": 10,                      # optional, default 0
          "error": null                               # optional text or null
        }
      ]
    }

Timestamps are ISO 8601 with a UTC offset (``Z`` or ``+01:00``; stored as UTC, microseconds kept); a timestamp
without an offset is rejected rather than guessed. Unknown fields are rejected too, so a typo cannot drop data
silently. The export is a logical backup of what an operator cares about: a service's status, failure streak
and updated_at, the run's fencing token, leases and nodes are runtime data and are not in the file (use
:func:`copy_storage` for a full copy).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    MetaData,
    Table,
    and_,
    delete,
    func,
    insert,
    null,
    or_,
    select,
)
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import sort_tables
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import TypeDecorator

from storage import errors, revision
from storage.engine import create_engine
from storage.inserts import SUPPORTED, insert_ignoring_conflicts
from storage.schema import leases, runs, service_state
from storage.url import async_url, redact

log = logging.getLogger(__name__)

FORMAT = "livedash-schedulers-state"
VERSION = 1
DEFAULT_BATCH_SIZE = 1000
LEGACY_NODE = "legacy-import"  # the node of imported runs that name none
# Mirrors services.runs.RunStatus and Trigger (storage may not import services; a test keeps them equal).
RUN_STATUSES = frozenset(
    {"running", "succeeded", "failed", "timed_out", "cancelled", "skipped", "missed", "abandoned"}
)
RUN_TRIGGERS = frozenset({"schedule", "manual", "retry"})
IMPORTED_STATUS = "STOPPED"  # scheduler_state.status of an imported service until it starts

_BUSY_TIMEOUT_MS = 60_000  # SQLite: wait for another importer or writer rather than fail
_IMPORT_CHUNK = 500  # rows per multi-row INSERT (500 x 13 columns stays far below every engine's parameter limit)
_PG_IMPORT_LOCK = 0x5C4EE  # pg_advisory_lock key (storage.migrate uses 0x5C4ED)
_MYSQL_IMPORT_LOCK = "livedash_schedulers_import"
_MAX_TEXT_BYTES = 65_535  # MySQL/MariaDB TEXT
_INT32_MAX = 2**31 - 1
_RUN_ID_NAMESPACE = uuid.UUID("6f1c2a55-8a0e-4c57-9a57-3d1f0f1b7a10")  # uuid5 ids of legacy runs without one

_SERVICE_FIELDS = ("paused", "overrides", "anchor_at", "last_fire_at")
_RUN_FIELDS = (
    "id",
    "scheduler",
    "scheduled_for",
    "attempt",
    "trigger",
    "status",
    "node",
    "started_at",
    "finished_at",
    "duration_seconds",
    "lag_seconds",
    "items_processed",
    "error",
)
_TOP_FIELDS = ("format", "version", "exported_at", "services", "runs")


class TransferError(RuntimeError):
    """A copy, export or import cannot be done; the message says why and what to do (never a password)."""


class StateFileError(TransferError, ValueError):
    """The JSON state file is malformed; the message names the file and the JSON path of the first bad entry."""


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_legacy_state` did.

    ``status`` is ``imported`` (rows inserted; ``services``/``runs`` count the rows this call inserted,
    ``already_present`` the file's rows another importer had stored first) or ``skipped`` (the database already
    had scheduler rows; nothing written, the file left where it was). ``backup`` is where the file was moved.
    """

    status: Literal["imported", "skipped"]
    path: Path
    services: int = 0
    runs: int = 0
    already_present: int = 0
    backup: Path | None = None
    reason: str | None = None

    @property
    def message(self) -> str:
        if self.status == "skipped":
            return f"skipped: {self.reason}"
        text = f"imported {self.services} services and {self.runs} runs from {self.path}"
        if self.already_present:
            text += f" ({self.already_present} rows were already present)"
        if self.backup is not None:
            text += f"; the file is kept as {self.backup}"
        elif self.reason:
            text += f"; {self.reason}"
        return text

    def __str__(self) -> str:
        return self.message


# -- copying a database ----------------------------------------------------------------------------------------


async def copy_storage(
    source_url: str,
    target_url: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[str, int], None] | None = None,
    source_connect_args: Mapping[str, Any] | None = None,
    target_connect_args: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, int]:
    """Copy every scheduler table from ``source_url`` to ``target_url``; return the rows copied per table.

    ``progress(table, rows_copied_so_far)`` is called after every batch (and once for an empty table).
    ``*_connect_args`` carry driver options a URL cannot (TLS contexts from StorageSettings.engine_options()).
    Raises TransferError: source not at head, same database on both sides, target not empty without
    ``overwrite``, a row the target refuses, or counts that differ after the copy.
    """
    from storage import migrate  # Alembic is only needed here

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if _same_database(source_url, target_url):
        raise TransferError(f"source and target are the same database ({redact(source_url)})")
    _require_sqlite_file(source_url, "source")
    tables = _tables(migrate.target_metadata())

    source = create_engine(source_url, pool_size=1, connect_args=source_connect_args)
    try:
        wanted = migrate.head()
        at = await _revision(source, source_url, "source")
        if at != wanted:
            raise TransferError(
                f"the source database {redact(source_url)} is at migration {at or '(none)'} but this version needs "
                f"{wanted}: migrate the source first (python -m manager migrate with DATABASE_URL set to it)"
            )
        try:
            await migrate.upgrade(target_url, connect_args=target_connect_args)
        except Exception as exc:
            raise TransferError(f"cannot migrate the target: {errors.explain(exc, target_url)}") from exc
        target = create_engine(target_url, pool_size=1, busy_timeout_ms=_BUSY_TIMEOUT_MS,
                               connect_args=target_connect_args)
        try:
            return await _copy(source, target, tables, target_url, batch_size, progress, overwrite)
        finally:
            await target.dispose()
    finally:
        await source.dispose()


async def _copy(
    source: AsyncEngine,
    target: AsyncEngine,
    tables: list[Table],
    target_url: str,
    batch_size: int,
    progress: Callable[[str, int], None] | None,
    overwrite: bool,
) -> dict[str, int]:
    writer = _immediate(target)
    copied: dict[str, int] = {}
    # The source snapshot is taken before anything is deleted: were source and target one database after all
    # (two spellings of one server), the copy would still read the rows as they were instead of nothing.
    async with _snapshot(source).connect() as src, src.begin():
        expected = await _counts(src, tables)  # the first read fixes the snapshot every later read sees
        if runs in tables:
            running = (
                await src.execute(select(func.count()).select_from(runs).where(runs.c.status == "running"))
            ).scalar_one()
            if running:
                log.warning(
                    "%d runs are 'running' in the source; they are copied as they are (stop the schedulers "
                    "before copying, or they stay 'running' on the target until a node with the same id restarts)",
                    running,
                )
        try:
            async with target.connect() as conn:
                existing = await _counts(conn, tables)
        except Exception as exc:
            raise TransferError(f"cannot read the target: {errors.explain(exc, target_url)}") from exc
        reference = {table.name for table in tables if table.info.get("seeded_by_migration")}
        occupied = {name: count for name, count in existing.items() if count and name not in reference}
        if occupied and not overwrite:
            listed = ", ".join(f"{name} ({count} rows)" for name, count in occupied.items())
            raise TransferError(
                f"the target database {redact(target_url)} already has scheduler rows: {listed}; "
                "refusing to copy over them (pass --overwrite to delete them first)"
            )
        if occupied:
            async with writer.begin() as conn:
                for table in reversed(tables):  # children before parents
                    await conn.execute(delete(table))
            log.warning("overwrite: deleted the target's rows first: %s", occupied)
        else:
            # Rows the migrations seeded (e.g. model prices) are replaced by the source's own copy of them.
            async with writer.begin() as conn:
                for table in reversed(tables):
                    if table.name in reference:
                        await conn.execute(delete(table))
        for table in tables:
            copied[table.name] = await _copy_table(src, writer, table, batch_size, progress)

    async with target.connect() as conn:
        actual = await _counts(conn, tables)
    wrong = [
        f"{name}: source {expected[name]}, copied {copied[name]}, target {actual[name]}"
        for name in expected
        if not expected[name] == copied[name] == actual[name]
    ]
    if wrong:
        raise TransferError(
            "row counts differ after the copy (was something writing to either database?): " + "; ".join(wrong)
        )
    return copied


async def _copy_table(
    src: AsyncConnection,
    writer: AsyncEngine,
    table: Table,
    batch_size: int,
    progress: Callable[[str, int], None] | None,
) -> int:
    key = list(table.primary_key.columns)
    if not key:
        raise TransferError(f"table {table.name} has no primary key, so it cannot be copied in batches")
    json_columns = [c for c in table.columns if _is_json(c)]
    flags = [c.is_(None).label(f"_transfer_null_{i}") for i, c in enumerate(json_columns)]
    transform = _TRANSFORMS.get(table.name)
    done = 0
    last: list[Any] | None = None
    async with writer.begin() as dst:
        while True:
            query = select(*table.columns, *flags).order_by(*key).limit(batch_size)
            if last is not None:
                query = query.where(_after(key, last))
            batch = (await src.execute(query)).all()
            if not batch:
                break
            rows: list[dict[str, Any]] = []
            for record in batch:
                values = {c.key: record._mapping[c] for c in table.columns}
                for column, flag in zip(json_columns, flags, strict=True):
                    if record._mapping[flag]:
                        values[column.key] = null()  # SQL NULL (a plain None would be stored as JSON null)
                rows.append(transform(values) if transform else values)
            try:
                await dst.execute(insert(table), rows)
            except Exception as exc:
                raise TransferError(
                    f"the target refused a row of {table.name} (after {done} rows): {_first_line(exc)}"
                ) from exc
            done += len(rows)
            last = [record._mapping[c] for c in key]
            if progress is not None:
                progress(table.name, done)
            if len(batch) < batch_size:
                break
    if done == 0 and progress is not None:
        progress(table.name, 0)
    return done


def _release_lease(row: dict[str, Any]) -> dict[str, Any]:
    """A copied lease is free (as after Coordinator.release); its token is kept so tokens only grow."""
    return {**row, "holder": None, "run_id": None, "expires_at": None}


_TRANSFORMS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {leases.name: _release_lease}


def _after(key: Sequence[Column[Any]], last: Sequence[Any]) -> ColumnElement[bool]:
    """Keyset condition ``key > last`` in the key's order, spelled out so it works on every engine."""
    alternatives = [
        and_(*(key[j] == last[j] for j in range(i)), key[i] > last[i]) for i in range(len(key))
    ]
    return or_(*alternatives)


def _tables(metadata: MetaData) -> list[Table]:
    """Tables in dependency order (parents first); ties keep the order they were defined in."""
    return list(sort_tables(list(metadata.tables.values())))


def _is_json(column: Column[Any]) -> bool:
    kind = column.type
    if isinstance(kind, TypeDecorator):
        kind = kind.impl_instance
    return isinstance(kind, JSON)


async def _counts(conn: AsyncConnection, tables: Iterable[Table]) -> dict[str, int]:
    return {
        table.name: int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
        for table in tables
    }


def _snapshot(engine: AsyncEngine) -> AsyncEngine:
    """Reads in one transaction see one consistent state (SQLite in WAL mode does this by itself)."""
    if engine.dialect.name in ("postgresql", "mysql", "mariadb"):
        return engine.execution_options(isolation_level="REPEATABLE READ")
    return engine


def _immediate(engine: AsyncEngine) -> AsyncEngine:
    """SQLite: take the write lock at BEGIN (no lock upgrade failing half-way); no effect elsewhere."""
    return engine.execution_options(sqlite_begin_immediate=True) if engine.dialect.name == "sqlite" else engine


def _same_database(a: str, b: str) -> bool:
    ua, ub = async_url(a), async_url(b)
    if ua.get_backend_name() != ub.get_backend_name():
        return False
    if ua.get_backend_name() == "sqlite":
        pa, pb = _sqlite_path(ua), _sqlite_path(ub)
        if pa is None or pb is None:
            return False
        if pa.exists() and pb.exists():
            return pa.samefile(pb)  # also hard links
        return pa == pb
    ports = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}

    def where(url: URL) -> tuple[str, int | None, str | None]:
        return (url.host or "localhost").lower(), url.port or ports.get(url.get_backend_name()), url.database

    return where(ua) == where(ub)


def _sqlite_path(url: URL) -> Path | None:
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return None
    return Path(database).expanduser().resolve()


def _require_sqlite_file(url: str, role: str) -> None:
    """Connecting to a missing SQLite file would create an empty database; say the file is missing instead."""
    parsed = async_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.query.get("uri"):
        return
    path = _sqlite_path(parsed)
    if path is not None and not path.exists():
        raise TransferError(f"the {role} SQLite database {path} does not exist")


async def _revision(engine: AsyncEngine, url: str, role: str) -> str | None:
    try:
        return await revision.database_revision(engine)
    except Exception as exc:
        raise TransferError(f"cannot read the {role}: {errors.explain(exc, url)}") from exc


def _first_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    text = (str(inner).strip().splitlines() or [""])[0]
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


# -- export ----------------------------------------------------------------------------------------------------


async def export_state(
    url: str, path: str | os.PathLike[str], *, connect_args: Mapping[str, Any] | None = None
) -> dict[str, int]:
    """Write the services' state and the run history to ``path`` in the JSON format above; return the counts.

    Runs are streamed in batches (memory stays bounded) from one read snapshot; the file appears atomically
    (a temporary file in the same directory, then os.replace), so a reader never sees half a file.
    """
    target = Path(path)
    _require_sqlite_file(url, "source")
    engine = create_engine(url, pool_size=1, connect_args=connect_args)
    try:
        if await _revision(engine, url, "database") is None:
            raise TransferError(f"{redact(url)} has no scheduler tables (it was never migrated)")
        return await _export(engine, target)
    finally:
        await engine.dispose()


async def _export(engine: AsyncEngine, target: Path) -> dict[str, int]:
    await anyio.Path(target.parent).mkdir(parents=True, exist_ok=True)
    fd, temp_name = await anyio.to_thread.run_sync(
        lambda: tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    )
    temp = Path(temp_name)
    count = 0
    try:
        async with await anyio.open_file(fd, "w", encoding="utf-8") as out:
            async with _snapshot(engine).connect() as conn, conn.begin():
                services = await _export_services(conn)
                header = {"format": FORMAT, "version": VERSION, "exported_at": _iso(datetime.now(UTC))}
                await out.write("{\n" + "".join(f"  {json.dumps(k)}: {json.dumps(v)},\n" for k, v in header.items()))
                await out.write(f'  "services": {json.dumps(services, ensure_ascii=False, sort_keys=True)},\n')
                await out.write('  "runs": [')
                async for batch in _export_runs(conn):
                    lines = (json.dumps(run, ensure_ascii=False) for run in batch)
                    await out.write(("\n    " if count == 0 else ",\n    ") + ",\n    ".join(lines))
                    count += len(batch)
                await out.write("\n  ]\n}\n")
            await out.flush()
            await anyio.to_thread.run_sync(os.fsync, out.wrapped.fileno())
        await anyio.to_thread.run_sync(os.replace, temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)  # synchronous on purpose: also runs when the export is being cancelled
        raise
    return {"services": len(services), "runs": count}


async def _export_services(conn: AsyncConnection) -> dict[str, dict[str, Any]]:
    rows = await conn.execute(
        select(
            service_state.c.scheduler,
            service_state.c.paused,
            service_state.c.overrides,
            service_state.c.anchor_at,
            service_state.c.last_fire_at,
        ).order_by(service_state.c.scheduler)
    )
    return {
        row.scheduler: {
            "paused": bool(row.paused),
            "overrides": row.overrides,
            "anchor_at": _iso(row.anchor_at),
            "last_fire_at": _iso(row.last_fire_at),
        }
        for row in rows
    }


async def _export_runs(conn: AsyncConnection) -> AsyncIterator[list[dict[str, Any]]]:
    """Runs grouped by service, oldest first, read by keyset on the unique (scheduler, scheduled_for, attempt)."""
    key = [runs.c.scheduler, runs.c.scheduled_for, runs.c.attempt]
    last: list[Any] | None = None
    while True:
        query = select(*(runs.c[name] for name in _RUN_FIELDS)).order_by(*key).limit(DEFAULT_BATCH_SIZE)
        if last is not None:
            query = query.where(_after(key, last))
        batch = (await conn.execute(query)).mappings().all()
        if not batch:
            return
        yield [
            {name: _iso(value) if isinstance(value, datetime) else value for name, value in row.items()}
            for row in batch
        ]
        final = batch[-1]
        last = [final["scheduler"], final["scheduled_for"], final["attempt"]]
        if len(batch) < DEFAULT_BATCH_SIZE:
            return


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# -- legacy import ---------------------------------------------------------------------------------------------


async def import_legacy_state(
    url: str, path: str | os.PathLike[str], *, connect_args: Mapping[str, Any] | None = None
) -> ImportResult | None:
    """Import the JSON state file at ``path`` into an empty scheduler database (first start only).

    None when there is no file. When the database already has scheduler_state or scheduler_runs rows nothing is
    written and the result says ``skipped: database not empty``. Otherwise the whole file is validated first (a
    malformed file raises StateFileError naming the file and the first bad entry, and nothing is imported), then
    the emptiness check and every insert happen in one transaction, serialized between importers (advisory lock
    on PostgreSQL, GET_LOCK on MySQL/MariaDB, BEGIN IMMEDIATE on SQLite) and inserted with insert-ignore on the
    keys, so replicas starting together store each row once. Afterwards the file is renamed to
    ``<name>.imported-<UTC timestamp>.bak`` next to it (never deleted). The database must be at head.
    """
    source = Path(path)
    if not await anyio.Path(source).exists():
        return None
    engine = create_engine(url, pool_size=1, busy_timeout_ms=_BUSY_TIMEOUT_MS, connect_args=connect_args)
    try:
        at = await _revision(engine, url, "database")
        if at != revision.HEAD:
            raise TransferError(
                f"the database is at migration {at or '(none)'} but this version needs {revision.HEAD}: "
                "run `python -m manager migrate` before importing the legacy state"
            )
        occupied = await _occupied(engine)
        if occupied:
            return _skipped(source, occupied)
        try:
            data = await anyio.Path(source).read_bytes()
        except FileNotFoundError:  # another importer sharing the file finished and renamed it meanwhile
            return ImportResult("skipped", source, reason="the file was imported and moved by another process")
        services, run_rows = parse_state(data, source)
        result = await _import(engine, source, services, run_rows)
    finally:
        await engine.dispose()
    if result.status == "imported":
        result = await _keep_as_backup(result)
    return result


async def _occupied(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return await _nonempty(conn)


async def _nonempty(conn: AsyncConnection) -> dict[str, int]:
    counts = await _counts(conn, (service_state, runs))
    return {name: count for name, count in counts.items() if count}


def _skipped(path: Path, occupied: Mapping[str, int]) -> ImportResult:
    found = ", ".join(f"{count} {name} rows" for name, count in occupied.items())
    return ImportResult("skipped", path, reason=f"database not empty ({found}); {path} left in place")


async def _import(
    engine: AsyncEngine, path: Path, services: list[dict[str, Any]], run_rows: list[dict[str, Any]]
) -> ImportResult:
    if engine.dialect.name in ("mysql", "mariadb"):
        # Each statement sees the latest commits: an importer that waited for another sees its rows.
        engine = engine.execution_options(isolation_level="READ COMMITTED")
    engine = _immediate(engine)
    now = datetime.now(UTC)
    state_rows = [
        {**row, "status": IMPORTED_STATUS, "consecutive_failures": 0, "node": None, "updated_at": now}
        for row in services
    ]
    async with engine.connect() as conn, _import_lock(conn), conn.begin():
        occupied = await _nonempty(conn)
        if occupied:
            return _skipped(path, occupied)
        inserted: dict[str, int] = {}
        for table, rows, key in ((service_state, state_rows, "scheduler"), (runs, run_rows, "id")):
            # One lock order for every importer (sorted keys), so two of them cannot deadlock.
            ordered = sorted(rows, key=lambda row: str(row[key]))
            inserted[table.name] = await _insert_ignoring(conn, table, ordered)
            stored = (await conn.execute(select(func.count()).select_from(table))).scalar_one()
            if stored < len(rows):
                raise TransferError(
                    f"{path}: only {stored} of {len(rows)} {table.name} rows could be stored; names or ids "
                    "that differ only in letter case or accents are the same key on MySQL/MariaDB"
                )
    total = len(state_rows) + len(run_rows)
    done = inserted[service_state.name] + inserted[runs.name]
    return ImportResult(
        "imported", path, services=inserted[service_state.name], runs=inserted[runs.name],
        already_present=total - done,
    )


@contextlib.asynccontextmanager
async def _import_lock(conn: AsyncConnection) -> AsyncIterator[None]:
    """Serialize importers of one database (SQLite needs none: BEGIN IMMEDIATE already does)."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        await conn.exec_driver_sql("SET LOCAL lock_timeout = '300s'")  # a hung importer cannot block us forever
        try:
            await conn.execute(select(func.pg_advisory_lock(_PG_IMPORT_LOCK)))
        except Exception as exc:
            raise TransferError(f"waiting for another importer of the legacy state: {_first_line(exc)}") from exc
        await conn.commit()
        try:
            yield
        finally:
            await conn.execute(select(func.pg_advisory_unlock(_PG_IMPORT_LOCK)))
            await conn.commit()
    elif dialect in ("mysql", "mariadb"):
        got = (await conn.execute(select(func.get_lock(_MYSQL_IMPORT_LOCK, 300)))).scalar()
        await conn.commit()
        if got != 1:
            raise TransferError("another process has been importing the legacy state into this database for 300s")
        try:
            yield
        finally:
            await conn.execute(select(func.release_lock(_MYSQL_IMPORT_LOCK)))
            await conn.commit()
    else:
        yield


async def _insert_ignoring(conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> int:
    """Insert ``rows`` skipping those whose key is already taken; return how many were inserted."""
    done = 0
    for start in range(0, len(rows), _IMPORT_CHUNK):
        chunk = rows[start : start + _IMPORT_CHUNK]
        result = await conn.execute(_insert_ignore(conn, table).values(chunk))
        done += max(int(result.rowcount), 0)
    return done


def _insert_ignore(conn: AsyncConnection, table: Table) -> Insert:
    """INSERT that skips rows whose primary key or unique key is taken; imports need a real skip."""
    if conn.dialect.name not in SUPPORTED:
        raise TransferError(f"importing into {conn.dialect.name} is not supported (no insert-ignore)")
    return insert_ignoring_conflicts(conn, table)


async def _keep_as_backup(result: ImportResult) -> ImportResult:
    """Rename the imported file to ``<name>.imported-<UTC timestamp>.bak`` (a free name: nothing is replaced)."""
    path = result.path
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidates = [f"{path.name}.imported-{stamp}.bak"] + [
        f"{path.name}.imported-{stamp}-{n}.bak" for n in range(2, 100)
    ]

    def rename() -> Path | str:
        for name in candidates:
            backup = path.with_name(name)
            if backup.exists():
                continue
            try:
                path.rename(backup)
            except FileNotFoundError:
                return "the file was already moved (another importer)"
            except OSError as exc:
                return f"could not rename it to {backup.name} ({exc.strerror or exc}); rename or remove it by hand"
            return backup
        return "no free backup name; rename the file by hand"

    outcome = await anyio.to_thread.run_sync(rename)
    if isinstance(outcome, Path):
        return _replace(result, backup=outcome)
    log.warning("legacy state imported, but %s: %s", path, outcome)
    return _replace(result, reason=outcome)


def _replace(result: ImportResult, **changes: Any) -> ImportResult:
    return dataclasses.replace(result, **changes)


# -- parsing and validating the file ---------------------------------------------------------------------------


def parse_state(data: bytes | str, path: Path | str = "<state>") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Validate a state document; return (scheduler_state rows, scheduler_runs rows) ready to insert.

    The state rows carry scheduler, paused, overrides, anchor_at and last_fire_at; the rest is set on import.
    Raises StateFileError ``<path>: <json path>: <problem>`` for the first bad entry.
    """
    try:
        document = json.loads(data)
    except UnicodeDecodeError as exc:
        raise StateFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise StateFileError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return _Validator(str(path)).document(document)


class _Validator:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> StateFileError:
        return StateFileError(f"{self.path}: {where}: {problem}" if where else f"{self.path}: {problem}")

    def document(self, doc: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        if not isinstance(doc, dict):
            raise self.fail("", f"expected a JSON object with \"format\": \"{FORMAT}\" at the top level")
        self.known(doc, "", _TOP_FIELDS)
        if doc.get("format") != FORMAT:
            raise self.fail("format", f"expected {json.dumps(FORMAT)}{self.got(doc.get('format'))}")
        version = doc.get("version")
        if version != VERSION or isinstance(version, bool):
            raise self.fail("version", f"expected {VERSION} (the only version this code reads){self.got(version)}")
        self.timestamp(doc.get("exported_at"), "exported_at")
        services = doc.get("services")
        services = {} if services is None else services
        if not isinstance(services, dict):
            raise self.fail("services", "expected an object of service name to state")
        run_list = doc.get("runs")
        run_list = [] if run_list is None else run_list
        if not isinstance(run_list, list):
            raise self.fail("runs", "expected an array of runs")
        state_rows = [self.service(name, body) for name, body in services.items()]
        run_rows: list[dict[str, Any]] = []
        ids: dict[str, int] = {}
        fire_times: dict[tuple[str, datetime, int], int] = {}
        for i, body in enumerate(run_list):
            row = self.run(i, body)
            self.unique(i, row, ids, fire_times)
            run_rows.append(row)
        return state_rows, run_rows

    def service(self, name: str, body: Any) -> dict[str, Any]:
        where = f"services.{name}" if name.replace("-", "").replace("_", "").isalnum() else f"services[{name!r}]"
        self.text(name, where, limit=100, what="a service name")
        if not isinstance(body, dict):
            raise self.fail(where, "expected an object {paused, overrides, anchor_at, last_fire_at}")
        self.known(body, where, _SERVICE_FIELDS)
        paused = body.get("paused", False)
        if not isinstance(paused, bool):
            raise self.fail(f"{where}.paused", f"expected true or false{self.got(paused)}")
        overrides = body.get("overrides")
        if overrides is not None and not isinstance(overrides, dict):
            raise self.fail(f"{where}.overrides", "expected an object of setting to value, or null")
        return {
            "scheduler": name,
            "paused": paused,
            "overrides": null() if overrides is None else overrides,
            "anchor_at": self.timestamp(body.get("anchor_at"), f"{where}.anchor_at"),
            "last_fire_at": self.timestamp(body.get("last_fire_at"), f"{where}.last_fire_at"),
        }

    def run(self, index: int, body: Any) -> dict[str, Any]:
        where = f"runs[{index}]"
        if not isinstance(body, dict):
            raise self.fail(where, "expected an object {id, scheduler, scheduled_for, status, ...}")
        self.known(body, where, _RUN_FIELDS)
        for required in ("scheduler", "scheduled_for", "status"):
            if body.get(required) is None:
                raise self.fail(f"{where}.{required}", "missing (required)")
        scheduler = self.text(body["scheduler"], f"{where}.scheduler", limit=100)
        scheduled_for = self.timestamp(body["scheduled_for"], f"{where}.scheduled_for")
        attempt = self.integer(body.get("attempt", 1), f"{where}.attempt", minimum=1)
        status = self.choice(body["status"], f"{where}.status", RUN_STATUSES)
        trigger = self.choice(body.get("trigger", "schedule"), f"{where}.trigger", RUN_TRIGGERS)
        given_id = body.get("id")
        if given_id is None:
            run_id = str(uuid.uuid5(_RUN_ID_NAMESPACE, f"{scheduler}|{_iso(scheduled_for)}|{attempt}"))
        else:
            run_id = self.text(given_id, f"{where}.id", limit=36)
        error = body.get("error")
        return {
            "id": run_id,
            "scheduler": scheduler,
            "scheduled_for": scheduled_for,
            "attempt": attempt,
            "trigger": trigger,
            "status": status,
            "node": self.text(body.get("node", LEGACY_NODE), f"{where}.node", limit=255),
            "started_at": self.timestamp(body.get("started_at"), f"{where}.started_at"),
            "finished_at": self.timestamp(body.get("finished_at"), f"{where}.finished_at"),
            "duration_seconds": self.number(body.get("duration_seconds"), f"{where}.duration_seconds"),
            "lag_seconds": self.number(body.get("lag_seconds"), f"{where}.lag_seconds"),
            "items_processed": self.integer(body.get("items_processed", 0), f"{where}.items_processed", minimum=0),
            "error": None if error is None else self.text(error, f"{where}.error", limit=None, blank=True),
            "fencing_token": None,
        }

    def unique(
        self, i: int, row: dict[str, Any], ids: dict[str, int], fire_times: dict[tuple[str, datetime, int], int]
    ) -> None:
        first = ids.setdefault(row["id"], i)
        if first != i:
            raise self.fail(f"runs[{i}].id", f"{row['id']!r} is also the id of runs[{first}]")
        first = fire_times.setdefault((row["scheduler"], row["scheduled_for"], row["attempt"]), i)
        if first != i:
            raise self.fail(
                f"runs[{i}]", f"same scheduler, scheduled_for and attempt as runs[{first}] (one row per attempt)"
            )

    # -- field checks

    def known(self, body: dict[str, Any], where: str, fields: Sequence[str]) -> None:
        for name in body:
            if name not in fields:
                at = f"{where}.{name}" if where else str(name)
                raise self.fail(at, f"unknown field (expected one of: {', '.join(fields)})")

    def got(self, value: Any) -> str:
        text = json.dumps(value, ensure_ascii=False)
        return f" (got {text if len(text) <= 60 else text[:57] + '...'})"

    def text(self, value: Any, where: str, *, limit: int | None, what: str = "text", blank: bool = False) -> str:
        if not isinstance(value, str):
            raise self.fail(where, f"expected {what}{self.got(value)}")
        if not blank and not value.strip():
            raise self.fail(where, "must not be empty")
        if limit is not None and len(value) > limit:
            raise self.fail(where, f"longer than {limit} characters")
        if len(value.encode("utf-8", "surrogatepass")) > _MAX_TEXT_BYTES:
            raise self.fail(where, f"longer than {_MAX_TEXT_BYTES} bytes")
        if "\x00" in value:
            raise self.fail(where, "contains a NUL character")
        return value

    def choice(self, value: Any, where: str, allowed: frozenset[str]) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise self.fail(where, f"expected one of {', '.join(sorted(allowed))}{self.got(value)}")
        return value

    def integer(self, value: Any, where: str, *, minimum: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= _INT32_MAX:
            raise self.fail(where, f"expected a whole number from {minimum} to {_INT32_MAX}{self.got(value)}")
        return value

    def number(self, value: Any, where: str) -> float | None:
        if value is None:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise self.fail(where, f"expected a number or null{self.got(value)}")
        return float(value)

    def timestamp(self, value: Any, where: str) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(where, f"not an ISO timestamp{self.got(value)}")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise self.fail(where, f"not an ISO timestamp{self.got(value)}") from None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise self.fail(where, f"ISO timestamp without a UTC offset; add Z or +hh:mm{self.got(value)}")
        return parsed.astimezone(UTC)


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "FORMAT",
    "VERSION",
    "ImportResult",
    "StateFileError",
    "TransferError",
    "copy_storage",
    "export_state",
    "import_legacy_state",
    "parse_state",
]
