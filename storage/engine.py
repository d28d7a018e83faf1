"""Async engines configured the same way for every process (services, manager, migrations, tests)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from storage.errors import TLSUnavailableError
from storage.url import async_url

DEFAULT_POOL_SIZE = 5
DEFAULT_MAX_OVERFLOW = 10
DEFAULT_BUSY_TIMEOUT_MS = 5000
DEFAULT_CONNECT_TIMEOUT = 10.0
_MYSQL_CLIENT_SSL = 0x800  # the CLIENT_SSL capability flag of the MySQL protocol: the server offers TLS


def create_engine(
    url: str | URL,
    *,
    pool_size: int | None = None,
    echo: bool = False,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    max_overflow: int | None = None,
    pool_timeout: float | None = None,
    connect_args: Mapping[str, Any] | None = None,
) -> AsyncEngine:
    """An AsyncEngine for a plain user URL (``sqlite:///...``, ``postgresql://...``, ``mysql://...``).

    ``connect_args`` go to the driver's connect() and win over ours (storage.settings passes TLS options this
    way); ``max_overflow`` and ``pool_timeout`` are SQLAlchemy's pool options. Creating the engine does not
    connect; call :func:`ping` to find out whether the database is reachable.
    """
    target = async_url(url)
    backend = target.get_backend_name()
    pool: dict[str, Any] = {}
    if max_overflow is not None:
        pool["max_overflow"] = max_overflow
    if pool_timeout is not None:
        pool["pool_timeout"] = pool_timeout
    if backend == "sqlite":
        return _sqlite_engine(
            target,
            pool_size=pool_size,
            echo=echo,
            busy_timeout_ms=busy_timeout_ms,
            connect_args=dict(connect_args or {}),
            **pool,
        )
    driver_args: dict[str, Any] = {}
    if target.get_driver_name() == "asyncpg":
        driver_args["timeout"] = connect_timeout
    elif target.get_driver_name() == "aiomysql":
        driver_args["connect_timeout"] = connect_timeout
        if "charset" not in target.query:
            driver_args["charset"] = "utf8mb4"  # full Unicode in names and error texts
    driver_args.update(connect_args or {})
    if backend in ("mysql", "mariadb"):
        # READ COMMITTED, as PostgreSQL runs by default. InnoDB's REPEATABLE READ locks every row an UPDATE
        # reads, matching or not, plus the gaps between them: on a small table the multi-row lease updates
        # scan the whole index, lock rows other transactions hold in order, and deadlock (measured: hundreds
        # per minute with 100 services). Under READ COMMITTED non-matching rows are not locked and there
        # are no gap locks; the coordination relies only on row locks and unique constraints.
        pool["isolation_level"] = "READ COMMITTED"
    engine = create_async_engine(
        target,
        echo=echo,
        pool_size=pool_size or DEFAULT_POOL_SIZE,
        max_overflow=pool.pop("max_overflow", DEFAULT_MAX_OVERFLOW),
        # No pre-ping: it costs a round trip on every checkout (measured on the run path); a dropped
        # connection fails its statement, SQLAlchemy invalidates the pool, and callers retry (outage tests).
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args=driver_args,
        **pool,
    )
    if target.get_driver_name() == "aiomysql" and driver_args.get("ssl"):
        _refuse_plaintext_mysql(engine, f"{target.host or 'localhost'}:{target.port or 3306}")
    return engine


async def ping(engine: AsyncEngine) -> None:
    """Run ``SELECT 1``; raises the driver's error if the database is unreachable (readiness probes)."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def _refuse_plaintext_mysql(engine: AsyncEngine, where: str) -> None:
    """aiomysql silently skips TLS when the server does not offer it; with ssl asked for, refuse such a connection.

    The check runs first on every new connection, before SQLAlchemy's own first queries, so no statement of ours
    travels in plain text (the handshake has happened by then; mysql_native_password does not send the password).
    """

    @event.listens_for(engine.sync_engine, "connect", insert=True)
    def _require_tls(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        raw = dbapi_connection.driver_connection
        if not int(getattr(raw, "server_capabilities", 0)) & _MYSQL_CLIENT_SSL:
            raw.close()
            raise TLSUnavailableError(f"MySQL/MariaDB server at {where} does not support SSL/TLS, but ssl is on")


def _sqlite_engine(
    url: URL,
    *,
    pool_size: int | None,
    echo: bool,
    busy_timeout_ms: int,
    connect_args: dict[str, Any] | None = None,
    max_overflow: int | None = None,
    pool_timeout: float | None = None,
) -> AsyncEngine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
    if not in_memory and not url.query.get("uri"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {}
    if not in_memory:  # :memory: uses a StaticPool, which has no size, overflow or timeout
        # One connection per process: SQLite has a single writer, and writers queued on our own pool are
        # served in order, while several connections would contend inside SQLite, whose busy handler
        # sleeps in growing steps (up to 100 ms) and starves some of them (measured: runs over a second).
        options.update(pool_size=1, max_overflow=0)
        if pool_timeout is not None:
            options["pool_timeout"] = pool_timeout
    if connect_args:
        options["connect_args"] = connect_args
    engine = create_async_engine(url, echo=echo, **options)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Python's sqlite3 (and aiosqlite) "legacy transaction control" skips BEGIN before SELECT, DDL and
        # SAVEPOINT, which breaks SAVEPOINT rollback and transactional DDL. SQLAlchemy's documented fix:
        # turn the driver's own BEGIN off here and emit BEGIN ourselves in the "begin" hook below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # journal_mode must run outside a transaction, which is why it lives here, before any BEGIN.
            cursor.execute("PRAGMA journal_mode=WAL")  # readers don't block the writer
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")  # wait for locks, don't fail
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL, far fewer fsyncs
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Opt-in per connection/engine: .execution_options(sqlite_begin_immediate=True) takes the write lock
        # up front, for transactions that read and then write (avoids SQLITE_BUSY on the lock upgrade).
        immediate = conn.get_execution_options().get("sqlite_begin_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def writer(engine: AsyncEngine) -> AsyncEngine:
    """The same engine for transactions that write: on SQLite they take the write lock at BEGIN.

    A deferred SQLite transaction that reads and then writes cannot upgrade its lock while another
    process writes; SQLite then fails at once with "database is locked" instead of waiting on the busy
    timeout (it would deadlock otherwise). BEGIN IMMEDIATE queues such transactions instead. Other
    engines ignore the option.
    """
    return engine.execution_options(sqlite_begin_immediate=True)
