"""Async engines configured the same way for every process (services, manager, migrations, tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from storage.url import async_url

DEFAULT_POOL_SIZE = 5
DEFAULT_BUSY_TIMEOUT_MS = 5000
DEFAULT_CONNECT_TIMEOUT = 10.0


def create_engine(
    url: str | URL,
    *,
    pool_size: int | None = None,
    echo: bool = False,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> AsyncEngine:
    """An AsyncEngine for a plain user URL (``sqlite:///...``, ``postgresql://...``, ``mysql://...``).

    Creating the engine does not connect; call :func:`ping` to find out whether the database is reachable.
    """
    target = async_url(url)
    backend = target.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(target, pool_size=pool_size, echo=echo, busy_timeout_ms=busy_timeout_ms)
    connect_args: dict[str, Any] = {}
    if target.get_driver_name() == "asyncpg":
        connect_args["timeout"] = connect_timeout
    elif target.get_driver_name() == "aiomysql":
        connect_args["connect_timeout"] = connect_timeout
        if "charset" not in target.query:
            connect_args["charset"] = "utf8mb4"  # full Unicode in names and error texts
    return create_async_engine(
        target,
        echo=echo,
        pool_size=pool_size or DEFAULT_POOL_SIZE,
        max_overflow=10,
        pool_pre_ping=True,  # survive server restarts and idle disconnects (MySQL wait_timeout)
        pool_recycle=1800,
        connect_args=connect_args,
    )


async def ping(engine: AsyncEngine) -> None:
    """Run ``SELECT 1``; raises the driver's error if the database is unreachable (readiness probes)."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def _sqlite_engine(url: URL, *, pool_size: int | None, echo: bool, busy_timeout_ms: int) -> AsyncEngine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
    if not in_memory and not url.query.get("uri"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {}
    if pool_size is not None and not in_memory:  # :memory: uses a StaticPool, which has no size
        options["pool_size"] = pool_size
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
