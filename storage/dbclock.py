"""The database's clock as SQL expressions: leases and claims expire by it, never by a node's clock.

Values are naive UTC in the same shape SQLAlchemy stores (`UTCDateTime`), so they compare correctly with
stored columns on every engine; selected on their own they come back as aware UTC datetimes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, literal
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from storage.types import UTCDateTime


class _DbUtcNow(FunctionElement[datetime]):
    """The database server's current time in UTC, as a naive-UTC timestamp (read back aware, in UTC)."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_utc_now"


class _DbUtcNowPlus(FunctionElement[datetime]):
    """The database server's current time in UTC plus a bound number of seconds."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_utc_now_plus"


def db_utc_now() -> ColumnElement[datetime]:
    """The database server's clock, in UTC, comparable with :class:`~storage.types.UTCDateTime` columns.

    PostgreSQL ``timezone('UTC', statement_timestamp())``: the start of the current statement, so it is
    the same for every row of a statement (an index can use it) and never stale inside a long transaction,
    unlike ``now()``. MariaDB/MySQL ``UTC_TIMESTAMP(6)`` (evaluated once per statement). SQLite
    ``strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'``: milliseconds padded to the
    ``YYYY-MM-DD HH:MM:SS.ffffff`` text SQLAlchemy writes, so text comparison orders like time.
    None of them depends on the session or server time zone.
    """
    return _DbUtcNow()


def db_utc_now_plus(seconds: float | ColumnElement[float]) -> ColumnElement[datetime]:
    """:func:`db_utc_now` plus ``seconds`` (may be fractional or negative), computed by the database.

    ``seconds`` is sent as a bound parameter, so statements built with different values share one cached
    compilation. Precision: microseconds, milliseconds on SQLite.
    """
    value: ColumnElement[float] = seconds if isinstance(seconds, ColumnElement) else literal(float(seconds), Float())
    return _DbUtcNowPlus(value)


_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now'{modifier})"


def _unsupported(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    raise CompileError(f"{element.name}() has no rendering for the {compiler.dialect.name} dialect")


def _seconds(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(_DbUtcNow)
def _now_default(element: _DbUtcNow, compiler: SQLCompiler, **kw: Any) -> str:
    return _unsupported(element, compiler, **kw)


@compiles(_DbUtcNowPlus)
def _plus_default(element: _DbUtcNowPlus, compiler: SQLCompiler, **kw: Any) -> str:
    return _unsupported(element, compiler, **kw)


@compiles(_DbUtcNow, "postgresql")
def _now_pg(element: _DbUtcNow, compiler: SQLCompiler, **kw: Any) -> str:
    return "timezone('UTC', statement_timestamp())"


@compiles(_DbUtcNowPlus, "postgresql")
def _plus_pg(element: _DbUtcNowPlus, compiler: SQLCompiler, **kw: Any) -> str:
    return f"(timezone('UTC', statement_timestamp()) + make_interval(secs => {_seconds(element, compiler, **kw)}))"


@compiles(_DbUtcNow, "mysql")
@compiles(_DbUtcNow, "mariadb")
def _now_mysql(element: _DbUtcNow, compiler: SQLCompiler, **kw: Any) -> str:
    return "UTC_TIMESTAMP(6)"


@compiles(_DbUtcNowPlus, "mysql")
@compiles(_DbUtcNowPlus, "mariadb")
def _plus_mysql(element: _DbUtcNowPlus, compiler: SQLCompiler, **kw: Any) -> str:
    # Whole microseconds: INTERVAL n SECOND with a float literal like 1e-07 is read differently by servers.
    micros = f"CAST(ROUND({_seconds(element, compiler, **kw)} * 1000000) AS SIGNED)"
    return f"(UTC_TIMESTAMP(6) + INTERVAL {micros} MICROSECOND)"


@compiles(_DbUtcNow, "sqlite")
def _now_sqlite(element: _DbUtcNow, compiler: SQLCompiler, **kw: Any) -> str:
    # %f is SS.SSS; '000' pads it to the six fractional digits SQLAlchemy's SQLite DateTime stores.
    return f"({_SQLITE_NOW.format(modifier='')} || '000')"


@compiles(_DbUtcNowPlus, "sqlite")
def _plus_sqlite(element: _DbUtcNowPlus, compiler: SQLCompiler, **kw: Any) -> str:
    modifier = f", printf('%.6f seconds', {_seconds(element, compiler, **kw)})"
    return f"({_SQLITE_NOW.format(modifier=modifier)} || '000')"


