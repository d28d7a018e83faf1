"""The database's clock as SQL expressions: leases and claims expire by it, never by a node's clock.

Values are naive UTC in the same shape SQLAlchemy stores (`UTCDateTime`), so they compare correctly with
stored columns on every engine; selected on their own they come back as aware UTC datetimes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from storage.types import UTCDateTime

# SQLite's %f has milliseconds ("08.123"); SQLAlchemy writes microseconds ("08.123456"): pad to match.
_SQLITE_NOW = "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')"


class db_utc_now(FunctionElement[datetime]):
    """The database server's current UTC time."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_utc_now"


class db_utc_now_plus(FunctionElement[datetime]):
    """The database server's current UTC time plus `seconds` (may be fractional or negative)."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_utc_now_plus"

    def __init__(self, seconds: float, **kwargs: Any) -> None:
        super().__init__(literal(float(seconds), Float()), **kwargs)


@compiles(db_utc_now, "postgresql")
def _now_pg(element: db_utc_now, compiler: Any, **kw: Any) -> str:
    return "(clock_timestamp() AT TIME ZONE 'UTC')"


@compiles(db_utc_now, "mysql")
@compiles(db_utc_now, "mariadb")
def _now_mysql(element: db_utc_now, compiler: Any, **kw: Any) -> str:
    return "UTC_TIMESTAMP(6)"


@compiles(db_utc_now, "sqlite")
def _now_sqlite(element: db_utc_now, compiler: Any, **kw: Any) -> str:
    return _SQLITE_NOW


@compiles(db_utc_now_plus, "postgresql")
def _plus_pg(element: db_utc_now_plus, compiler: Any, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"((clock_timestamp() AT TIME ZONE 'UTC') + make_interval(secs => {seconds}))"


@compiles(db_utc_now_plus, "mysql")
@compiles(db_utc_now_plus, "mariadb")
def _plus_mysql(element: db_utc_now_plus, compiler: Any, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"(UTC_TIMESTAMP(6) + INTERVAL ROUND({seconds} * 1000000) MICROSECOND)"


@compiles(db_utc_now_plus, "sqlite")
def _plus_sqlite(element: db_utc_now_plus, compiler: Any, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now', ({seconds}) || ' seconds') || '000')"
