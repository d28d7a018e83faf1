"""Database URLs: map the plain URLs users write to the async drivers this project runs on."""

from __future__ import annotations

import re

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from storage.errors import StorageConfigError

# Scheme users may write -> (backend SQLAlchemy knows, async driver we use for it).
_BACKENDS: dict[str, tuple[str, str]] = {
    "sqlite": ("sqlite", "aiosqlite"),
    "postgresql": ("postgresql", "asyncpg"),
    "postgres": ("postgresql", "asyncpg"),
    "mysql": ("mysql", "aiomysql"),
    "mariadb": ("mysql", "aiomysql"),
    "mssql": ("mssql", "aioodbc"),
}
# Drivers that already speak asyncio: such URLs are used unchanged.
_ASYNC_DRIVERS = {"aiosqlite", "asyncpg", "psycopg_async", "aiomysql", "asyncmy", "aioodbc"}
# Sync drivers people copy from other tools' URLs; we swap in the async driver of the same backend.
_SYNC_DRIVERS = {"pysqlite", "psycopg2", "psycopg", "pg8000", "pymysql", "mysqldb", "mysqlconnector", "pyodbc"}

VALID_SCHEMES = tuple(_BACKENDS)


def async_url(url: str | URL) -> URL:
    """The async-driver URL for ``url``; raises StorageConfigError for anything we cannot run."""
    parsed = _parse(url)
    scheme, _, driver = parsed.drivername.partition("+")
    if scheme not in _BACKENDS:
        raise StorageConfigError(
            f"unsupported database URL scheme {scheme!r} in {redact(parsed)}; "
            f"valid schemes: {', '.join(VALID_SCHEMES)} (e.g. sqlite:///./var/app.db, "
            "postgresql://user:pass@host:5432/db, mysql://user:pass@host:3306/db)"
        )
    backend, default_driver = _BACKENDS[scheme]
    if driver in _ASYNC_DRIVERS:
        return parsed
    if driver and driver not in _SYNC_DRIVERS:
        raise StorageConfigError(
            f"unknown driver {driver!r} in {redact(parsed)}; write the URL without a driver "
            f"({scheme}://...) to use {default_driver}"
        )
    result = parsed.set(drivername=f"{backend}+{default_driver}")
    if default_driver == "asyncpg" and "sslmode" in result.query:
        # libpq spells it sslmode; asyncpg only accepts the same values under the name ssl.
        query = dict(result.query)
        query["ssl"] = query.pop("sslmode")
        result = result.set(query=query)
    return result


def redact(url: str | URL) -> str:
    """Render ``url`` with the password replaced by ``***`` so it can go in logs and error messages."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sa_exc.ArgumentError, ValueError):
        # Not parseable: still hide anything between "user:" and "@".
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _parse(url: str | URL) -> URL:
    if isinstance(url, URL):
        return url
    try:
        return make_url(url.strip())
    except (sa_exc.ArgumentError, ValueError) as exc:
        raise StorageConfigError(
            f"not a database URL: {redact(url)!r}; expected e.g. sqlite:///./var/app.db or "
            f"postgresql://user:pass@host:5432/db (valid schemes: {', '.join(VALID_SCHEMES)})"
        ) from exc
