"""Import the companies' CSV feeds into ``session_imports``: fetch, parse, write in multi-row batches, dedupe.

Per company: the feed is fetched (http(s) with Basic auth when both a username and a resolved password exist,
or ``file://``), parsed by :mod:`domain.csvfeed` in a worker thread one batch ahead of the writer, and written
in batches of ``rows_per_statement`` rows, each batch one multi-row statement (a feed's last, shorter batch: a
few, see :func:`_send_batch`) in its own transaction. A run cut off halfway keeps what it wrote, and the next
run skips it by the dedupe key. The statements are compiled once per process (:func:`_prepare`): on
PostgreSQL this imports at about 0.6x the speed of a bare asyncpg ``executemany`` of already-parsed rows,
parsing included (bench/csv_import.py). Rejected lines go to ``import_rejections``, one row per (company, sha256 of
the line): a line the feed repeats every run bumps ``last_seen_at`` and ``seen_count`` instead of piling up.

Duplicate modes, for a row whose (company, external session id) is already stored:

* ``skip`` (default): insert-only; the stored row is left untouched (the original service class's behaviour).
* ``update``: the stored row's raw fields are overwritten with the feed's values, but only while it is not
  processed yet (``processed_at IS NULL``) and not claimed by a live import-processing run. A processed import
  has already become a session (or was settled as failed); import-processing never reads it again, so
  overwriting it would only make the raw row silently disagree with the session built from it (the original's
  upsert did exactly that). Such rows are counted as skipped.

The times are stored as the feed's raw strings: the company's time zone is applied by import-processing.

A company that fails (HTTP error, missing file, bad secret reference, a database error) is reported with its
reason and does not stop the others. Companies are the ACTIVE ones, paged by (created_at, id), ``batch_size`` per
page, at most ``max_concurrent`` importing at once across the whole run.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import anyio.to_thread
import httpx
from sqlalchemy import Insert, Table, and_, bindparam, case, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from domain.companies import Company, list_companies
from domain.csvfeed import COLUMNS, FeedParser, FeedRow, Rejection
from domain.fetch import DEFAULT_MAX_BYTES, BasicAuth, FetchError, display_url, fetch_text
from domain.model import CompanyStatus, DuplicateMode
from domain.secrets import SecretError, resolve_secret
from domain.tables import companies, import_rejections, session_imports
from storage.dbclock import db_utc_now
from storage.engine import writer
from storage.inserts import insert_ignoring_conflicts

# Columns written per row; bounds the rows per statement by the engines' bind-parameter limits (~32k).
_ROW_COLUMNS = (*COLUMNS, "id", "company_id", "line_number", "created_at", "updated_at", "attempts")
_MAX_PARAMETERS = 30_000
_BATCH_MAX_CHARS = 2_000_000  # a batch of long rows is cut earlier: MariaDB's max_allowed_packet is 16 MB
_PREPARED_MAX = 64  # compiled shapes kept per process (there are at most ~13 per dialect and mode)
_RAW_LINE_MAX = 2000  # characters of a rejected line kept in import_rejections
_REASON_MAX = 1000

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


@dataclass(frozen=True)
class ImportSettings:
    duplicate_mode: DuplicateMode = DuplicateMode.SKIP
    fetch_timeout: float = 60.0  # seconds for one feed download
    fetch_max_bytes: int = DEFAULT_MAX_BYTES
    rows_per_statement: int = 1000
    batch_size: int = 10  # companies per page
    max_concurrent: int = 5  # companies importing at once


@dataclass
class CompanyResult:
    """What one company's import did; ``error`` is set when the company failed (counts then cover what landed)."""

    company_id: str
    name: str
    fetched: int = 0  # data rows in the feed (good + rejected)
    inserted: int = 0
    updated: int = 0
    skipped: int = 0  # duplicates left alone
    rejected: int = 0
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass
class ImportReport:
    results: list[CompanyResult] = field(default_factory=list)
    not_reached: int = 0  # companies the run stopped before (should_continue turned False)

    def total(self, name: str) -> int:
        return sum(int(getattr(r, name)) for r in self.results)

    @property
    def failed(self) -> list[CompanyResult]:
        return [r for r in self.results if r.failed]

    @property
    def all_failed(self) -> bool:
        """True when there were companies and every one of them failed (the service then fails the run)."""
        return bool(self.results) and all(r.failed for r in self.results)

    def summary(self) -> str:
        text = (
            f"{len(self.results)} company(ies), {len(self.failed)} failed; {self.total('fetched')} row(s) fetched, "
            f"{self.total('inserted')} inserted, {self.total('updated')} updated, "
            f"{self.total('skipped')} duplicate(s) skipped, {self.total('rejected')} rejected"
        )
        if self.not_reached:
            text += f"; {self.not_reached} company(ies) left for the next run (time budget or shutdown)"
        return text


async def import_all(
    engine: AsyncEngine,
    settings: ImportSettings,
    *,
    now: Callable[[], datetime],
    should_continue: Callable[[], bool] = lambda: True,
    log: Log | None = None,
    client: httpx.AsyncClient | None = None,
) -> ImportReport:
    """Import every ACTIVE company's feed; never raises for a single company's failure."""
    logger = log or logging.getLogger(__name__)
    report = ImportReport()
    limiter = anyio.CapacityLimiter(settings.max_concurrent)
    own_client = client is None
    http = client or httpx.AsyncClient()
    try:
        after: tuple[datetime, str] | None = None
        while should_continue():
            page = await _active_page(engine, after, settings.batch_size)
            if not page:
                break
            after = (page[-1].created_at, page[-1].id)

            async def one(company: Company) -> None:
                async with limiter:
                    if not should_continue():
                        report.not_reached += 1
                        return
                    result = await import_company(engine, company, settings, now=now, client=http, log=logger)
                    report.results.append(result)

            async with anyio.create_task_group() as tg:
                for company in page:
                    tg.start_soon(one, company)
            if len(page) < settings.batch_size:
                break
    finally:
        if own_client:
            await http.aclose()
    return report


async def _active_page(engine: AsyncEngine, after: tuple[datetime, str] | None, size: int) -> list[Company]:
    """The next page of ACTIVE companies by (created_at, id): keyset paging, stable while rows are added."""
    where = None
    if after is not None:
        created, cid = after
        where = or_(companies.c.created_at > created, and_(companies.c.created_at == created, companies.c.id > cid))
    return await list_companies(engine, statuses=[CompanyStatus.ACTIVE], where=where, limit=size)


async def import_company(
    engine: AsyncEngine,
    company: Company,
    settings: ImportSettings,
    *,
    now: Callable[[], datetime],
    client: httpx.AsyncClient | None = None,
    log: Log | None = None,
) -> CompanyResult:
    """Import one company's feed (whatever its status); failures are returned in ``error``, never raised."""
    logger = log or logging.getLogger(__name__)
    result = CompanyResult(company.id, company.name)
    try:
        text = await fetch_text(
            company.csv_url,
            client=client,
            auth=_auth(company),
            time_limit=settings.fetch_timeout,
            max_bytes=settings.fetch_max_bytes,
        )
        parser = FeedParser(text)
        await _write_rows(engine, company.id, parser, settings, now, result)
        result.rejected = len(parser.rejections)
        result.fetched = result.inserted + result.updated + result.skipped + result.rejected
        await _write_rejections(engine, company.id, parser.rejections, now())
    except (FetchError, SecretError) as exc:
        result.error = str(exc)
    except SQLAlchemyError as exc:
        result.error = f"database error: {_db_reason(exc)}"
    if result.error is not None:
        logger.warning("csv import of company %r failed: %s", company.name, result.error)
    elif result.rejected:
        logger.info(
            "company %r: %d line(s) of %s rejected (see import_rejections)",
            company.name,
            result.rejected,
            display_url(company.csv_url),
        )
    return result


def _auth(company: Company) -> BasicAuth | None:
    """Basic auth only when both a username and a (non-empty) resolved password exist."""
    if not company.csv_username or not company.csv_password_ref:
        return None
    try:
        password = resolve_secret(company.csv_password_ref)
    except SecretError as exc:
        raise SecretError(f"csv_password: {exc}") from None
    return BasicAuth(company.csv_username, password) if password else None


async def _write_rows(
    engine: AsyncEngine,
    company_id: str,
    parser: FeedParser,
    settings: ImportSettings,
    now: Callable[[], datetime],
    result: CompanyResult,
) -> None:
    """Write the feed's good rows batch by batch while a worker thread parses the next batch.

    Parsing is CPU work (a third of an import's time); in a thread it overlaps the database round trips of the
    batch before it instead of adding to them, and it never blocks the event loop for a whole feed.
    """
    size = _batch_rows(settings)
    send, receive = anyio.create_memory_object_stream[list[FeedRow]](1)

    async def produce() -> None:
        async with send:
            while True:
                batch = await anyio.to_thread.run_sync(parser.take, size, _BATCH_MAX_CHARS)
                if not batch:
                    return
                try:
                    await send.send(batch)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return  # the writer stopped (its error is raised below)

    failure: SQLAlchemyError | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        try:
            async with receive:
                async for batch in receive:
                    await _write_batch(engine, company_id, batch, settings, now(), result)
        except SQLAlchemyError as exc:  # raised as itself, not wrapped in the task group's ExceptionGroup
            failure = exc
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure


def _batch_rows(settings: ImportSettings) -> int:
    return max(1, min(settings.rows_per_statement, _MAX_PARAMETERS // len(_ROW_COLUMNS)))


async def _write_batch(
    engine: AsyncEngine,
    company_id: str,
    batch: Sequence[FeedRow],
    settings: ImportSettings,
    stamp: datetime,
    result: CompanyResult,
) -> None:
    ids = _new_ids(len(batch))
    values = [
        {
            **row.values,
            "id": ids[n],
            "company_id": company_id,
            "line_number": row.line_number,
            "created_at": stamp,
            "updated_at": stamp,
            "attempts": 0,
        }
        for n, row in enumerate(batch)
    ]
    async with writer(engine).begin() as conn:
        if settings.duplicate_mode is DuplicateMode.SKIP:
            inserted = await _insert_skipping(conn, values, _batch_rows(settings))
            result.inserted += inserted
            result.skipped += len(values) - inserted
        else:
            inserted, updated = await _upsert(conn, company_id, values, _batch_rows(settings))
            result.inserted += inserted
            result.updated += updated
            result.skipped += len(values) - inserted - updated


@dataclass(frozen=True)
class _Prepared:
    """A multi-row statement compiled to its SQL text, with where each positional parameter comes from."""

    sql: str
    order: list[tuple[int, str]]  # (row in the batch, column) for each positional parameter, in order
    processors: dict[str, Callable[[Any], Any]]  # column -> the type's bind conversion (UTCDateTime columns)
    row_major: Callable[[dict[str, Any]], tuple[Any, ...]] | None  # one row's values, when rows follow each other


_PREPARED: dict[tuple[str, DuplicateMode, int], _Prepared] = {}
_PARAM = re.compile(r"^r(\d+)_(\w+)$")


def _new_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs as text; uuid.uuid4() per row was 5% of an import's time."""
    raw = os.urandom(16 * count).hex()
    ids = []
    for n in range(0, 32 * count, 32):
        h = raw[n : n + 32]
        ids.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}")
    return ids


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _prepare(conn: AsyncConnection, mode: DuplicateMode, rows: int) -> _Prepared:
    """The batch statement for ``rows`` rows, compiled once per process, dialect, mode and size.

    SQLAlchemy does not cache multi-row VALUES statements ("no key"): building and compiling one of 1,000 rows
    costs a third of a second, more than the database spends on the rows, and its per-value parameter
    handling costs as much again. So the statement is compiled here once, with numbered bind parameters, and
    each batch sends that SQL with a flat tuple of values through the same connection and transaction,
    converted by the same column types' bind processors (measured in bench/csv_import.py).
    """
    key = (conn.dialect.name, mode, rows)
    prepared = _PREPARED.get(key)
    if prepared is not None:
        return prepared
    t = session_imports
    values = [{c: bindparam(f"r{i}_{c}", type_=t.c[c].type) for c in _ROW_COLUMNS} for i in range(rows)]
    stmt: Insert
    if mode is DuplicateMode.SKIP:
        stmt = insert_ignoring_conflicts(conn, t).values(values)
    else:
        overwrite = [*COLUMNS, "line_number", "updated_at"]
        stmt = _upsert_statement(
            conn.dialect.name,
            t,
            values,
            keys=["company_id", "external_session_id"],
            set_=lambda new: {name: new[name] for name in overwrite},
            where=_updatable(),
        )
    compiled = stmt.compile(dialect=conn.dialect)
    if not compiled.positional or compiled.positiontup is None:
        raise SQLAlchemyError(f"csv import needs a positional parameter style; {conn.dialect.name} has another")
    order: list[tuple[int, str]] = []
    for name in compiled.positiontup:
        match = _PARAM.match(name)
        if match is None:
            raise SQLAlchemyError(f"unexpected parameter {name!r} in the csv import statement")
        order.append((int(match.group(1)), match.group(2)))
    processors: dict[str, Callable[[Any], Any]] = {}
    for c in _ROW_COLUMNS:
        processor = t.c[c].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        if processor is not None:
            processors[c] = processor
    columns = [c for i, c in order if i == 0]
    row_major = None
    if len(columns) > 1 and order == [(i, c) for i in range(rows) for c in columns]:
        row_major = operator.itemgetter(*columns)
    prepared = _Prepared(str(compiled), order, processors, row_major)
    if len(_PREPARED) >= _PREPARED_MAX:
        _PREPARED.pop(next(iter(_PREPARED)))
    _PREPARED[key] = prepared
    return prepared


async def _send_batch(conn: AsyncConnection, mode: DuplicateMode, values: list[dict[str, Any]], size: int) -> int:
    """Send a batch: one statement when it is ``size`` rows (or a power of two), else a few, all of cached shapes.

    A feed's last batch has any length; splitting it into powers of two (730 = 512 + 128 + 64 + 16 + 8 + 2)
    keeps the shapes a process ever compiles to ``size`` plus at most a dozen, instead of one per remainder.
    """
    total = 0
    start = 0
    for count in _shapes(len(values), size):
        total += await _send_statement(conn, mode, values[start : start + count])
        start += count
    return total


def _shapes(count: int, size: int) -> list[int]:
    if count == size or count & (count - 1) == 0:
        return [count] if count else []
    pieces = []
    bit = 1 << (count.bit_length() - 1)
    while count:
        if count >= bit:
            pieces.append(bit)
            count -= bit
        bit >>= 1
    return pieces


async def _send_statement(conn: AsyncConnection, mode: DuplicateMode, values: list[dict[str, Any]]) -> int:
    """Send rows as one multi-row statement; returns the driver's row count."""
    prepared = _prepare(conn, mode, len(values))
    for column, processor in prepared.processors.items():
        converted: dict[Any, Any] = {}  # a batch shares one timestamp: convert each distinct value once
        for row in values:
            value = row[column]
            if value not in converted:
                converted[value] = processor(value)
            row[column] = converted[value]
    if prepared.row_major is not None:  # the usual layout: every row's columns in one fixed order
        getter = prepared.row_major
        parameters = tuple(value for row in values for value in getter(row))
    else:
        parameters = tuple(values[i][c] for i, c in prepared.order)
    outcome = await conn.exec_driver_sql(prepared.sql, parameters)
    return max(int(outcome.rowcount), 0)


async def _insert_skipping(conn: AsyncConnection, values: list[dict[str, Any]], size: int) -> int:
    """INSERT ... ON CONFLICT DO NOTHING / INSERT IGNORE; returns the rows really inserted (the row count)."""
    return await _send_batch(conn, DuplicateMode.SKIP, values, size)


def _updatable() -> ColumnElement[bool]:
    """A stored import the feed may overwrite: not processed, and not held by a live import-processing claim."""
    t = session_imports
    return and_(t.c.processed_at.is_(None), or_(t.c.claimed_until.is_(None), t.c.claimed_until < db_utc_now()))


async def _upsert(conn: AsyncConnection, company_id: str, values: list[dict[str, Any]], size: int) -> tuple[int, int]:
    """One dialect upsert for the batch; (inserted, updated), classified by a lookup of the batch's keys first.

    Row counts of upserts differ between engines (MariaDB counts an update twice, found-rows or not), so the
    counts come from the lookup; one csv-import run at a time writes a company's rows, so they are exact.
    """
    t = session_imports
    ids = [v["external_session_id"] for v in values]
    existing = {
        sid: bool(ok)
        for sid, ok in (
            await conn.execute(
                select(t.c.external_session_id, case((_updatable(), 1), else_=0)).where(
                    t.c.company_id == company_id, t.c.external_session_id.in_(ids)
                )
            )
        ).all()
    }
    await _send_batch(conn, DuplicateMode.UPDATE, values, size)
    inserted = len(values) - len(existing)
    updated = sum(1 for ok in existing.values() if ok)
    return inserted, updated


async def _write_rejections(
    engine: AsyncEngine, company_id: str, rejections: Sequence[Rejection], when: datetime
) -> None:
    """Record rejected lines once per (company, line content); a repeat bumps last_seen_at and seen_count."""
    if not rejections:
        return
    unique: dict[str, Rejection] = {}
    for rejection in rejections:
        unique.setdefault(hashlib.sha256(rejection.raw_line.encode("utf-8", "surrogatepass")).hexdigest(), rejection)
    values = [
        {
            "company_id": company_id,
            "fingerprint": fingerprint,
            "line_number": r.line_number,
            "reason": _storable(r.reason, _REASON_MAX),
            "raw_line": _storable(r.raw_line, _RAW_LINE_MAX),
            "first_seen_at": when,
            "last_seen_at": when,
            "seen_count": 1,
        }
        for fingerprint, r in unique.items()
    ]
    t = import_rejections
    size = _MAX_PARAMETERS // len(values[0])
    async with writer(engine).begin() as conn:
        for start in range(0, len(values), size):
            stmt = _upsert_statement(
                conn.dialect.name,
                t,
                values[start : start + size],
                keys=["company_id", "fingerprint"],
                set_=lambda new: {
                    "last_seen_at": new["last_seen_at"],
                    "line_number": new["line_number"],
                    "reason": new["reason"],
                    "seen_count": t.c.seen_count + 1,
                },
            )
            await conn.execute(stmt)


def _upsert_statement(
    dialect: str,
    table: Table,
    values: list[dict[str, Any]] | None,
    *,
    keys: list[str],
    set_: Callable[[Any], dict[str, Any]],
    where: ColumnElement[bool] | None = None,
) -> Insert:
    """An upsert on ``keys`` (multi-row with ``values``, else for executemany): ``set_(new)`` maps columns to
    new values, ``new[col]`` being the incoming row's.

    PostgreSQL and SQLite use ON CONFLICT DO UPDATE ... WHERE; MariaDB has no WHERE on ON DUPLICATE KEY
    UPDATE, so there each column keeps its value unless ``where`` holds (IF(where, new, old)).
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(table) if values is None else pg_insert(table).values(values)
        return pg.on_conflict_do_update(index_elements=keys, set_=set_(pg.excluded), where=where)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite = sqlite_insert(table) if values is None else sqlite_insert(table).values(values)
        return lite.on_conflict_do_update(index_elements=keys, set_=set_(lite.excluded), where=where)
    if dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        my = mysql_insert(table) if values is None else mysql_insert(table).values(values)
        updates = set_(my.inserted)
        if where is not None:
            updates = {name: func.IF(where, value, table.c[name]) for name, value in updates.items()}
        return my.on_duplicate_key_update(updates)
    raise SQLAlchemyError(f"upserts are not supported on {dialect}")


def _storable(text: str, limit: int) -> str:
    """Text every engine accepts: shortened, no NUL (PostgreSQL refuses it), only encodable characters."""
    shortened = text if len(text) <= limit else text[:limit] + "…"
    return shortened.replace("\x00", "\\x00").encode("utf-8", "replace").decode("utf-8")


def _db_reason(exc: SQLAlchemyError) -> str:
    """The driver's message without SQLAlchemy's statement and parameter dump (rows may be large)."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc).split("\n[SQL:", 1)[0]
    return f"{type(orig or exc).__name__}: {text[:300]}"
