"""Storage errors, and plain-language explanations of driver failures.

Operators see these messages at startup and in readiness probes, so they name what to check (host, port, user,
database) and never include the password.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from collections.abc import Iterator

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

# The extra that installs each optional async driver (see pyproject's optional-dependencies).
_DRIVER_INSTALL = {
    "asyncpg": "pip install 'livedash-schedulers[postgresql]'",
    "aiomysql": "pip install 'livedash-schedulers[mysql]'",
    "pymysql": "pip install 'livedash-schedulers[mysql]'",
    "aiosqlite": "pip install aiosqlite",
    "aioodbc": "pip install aioodbc (and an ODBC driver for SQL Server)",
    "pyodbc": "pip install aioodbc (and an ODBC driver for SQL Server)",
}

_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433}
_PG_AUTH_STATES = {"28000", "28P01"}  # invalid authorization specification / invalid password
_PG_UNKNOWN_DB = "3D000"
_MYSQL_AUTH_CODES = {1044, 1045, 1698}  # db access denied / access denied / unix_socket auth refused
_MYSQL_UNKNOWN_DB = 1049
# SQLAlchemy's QueuePool timeout text: "QueuePool limit of size 5 overflow 10 reached, ..., timeout 30.00".
_POOL_LIMIT = re.compile(r"limit of size (\d+) overflow (-?\d+) reached.*timeout (\d+(?:\.\d+)?)", re.DOTALL)
# What drivers say when TLS was asked for and the server has none (asyncpg, libpq, MySQL clients).
_NO_TLS = ("rejected ssl upgrade", "server does not support ssl", "ssl connection error: ssl is required")


class StorageConfigError(ValueError):
    """The configured database URL or storage settings cannot be used (unknown scheme, unparseable, ...)."""


class TLSUnavailableError(ConnectionError):
    """TLS was required but the server does not offer it (raised where a driver would fall back to plain text)."""


def explain(
    exc: BaseException, url: str | URL, *, pool_size: int | None = None, pool_timeout: float | None = None
) -> str:
    """Turn a connect/migrate failure into one line that says what is wrong and what to do.

    ``pool_size``/``pool_timeout`` (the most connections the pool opens, the acquire timeout in seconds) let a
    pool timeout say how big the pool was; without them they are read from SQLAlchemy's message when present.
    """
    from storage.url import redact  # late import: storage.url raises StorageConfigError from this module

    if isinstance(exc, StorageConfigError):
        return str(exc)
    try:
        parsed: URL | None = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        parsed = None
    where = _where(parsed)
    chain = list(_chain(exc))

    for e in chain:
        if isinstance(e, ImportError) and (e.name or "").split(".")[0] in _DRIVER_INSTALL:
            module = (e.name or "").split(".")[0]
            return f"database driver {module!r} is not installed: {_DRIVER_INSTALL[module]}"
    for e in chain:
        if isinstance(e, sa_exc.TimeoutError):  # SQLAlchemy's pool timeout, not a network timeout
            return _pool_exhausted(e, where, pool_size, pool_timeout)
    for e in chain:
        code = _mysql_code(e)
        state = getattr(e, "sqlstate", None)
        user = parsed.username if parsed is not None else None
        database = parsed.database if parsed is not None else None
        if state in _PG_AUTH_STATES or code in _MYSQL_AUTH_CODES:
            return (
                f"authentication failed for user {user!r} on database {database!r} at {where}: "
                "check the user name and password, and that the user may access this database"
            )
        if state == _PG_UNKNOWN_DB or code == _MYSQL_UNKNOWN_DB:
            return (
                f"database {database!r} does not exist on {where}: create it "
                f"(CREATE DATABASE {database}) or fix the database name in the URL"
            )
    for e in chain:
        if isinstance(e, TLSUnavailableError) or any(text in str(e).lower() for text in _NO_TLS):
            return (
                f"TLS/certificate problem connecting to {where}: the server does not support SSL/TLS but the "
                "storage settings require it; enable TLS on the server, or set DATABASE_SSL=false if the network "
                f"is trusted ({_detail(e, parsed)})"
            )
        if isinstance(e, ssl.SSLError) or "certificate" in str(e).lower():
            return (
                f"TLS/certificate problem connecting to {where}: check the CA certificate, the server "
                f"certificate's host name, and the ssl options in the URL ({_detail(e, parsed)})"
            )
    for e in chain:
        if isinstance(e, ConnectionRefusedError) or (isinstance(e, OSError) and e.errno == errno.ECONNREFUSED):
            return f"connection refused by {where}: is the server running? check host/port/firewall"
        if isinstance(e, socket.gaierror):
            return f"cannot resolve host of {where}: check the host name in the URL and DNS"
        if isinstance(e, TimeoutError):
            return f"timed out connecting to {where}: is the server running? check host/port/firewall"
    for e in chain:
        message = str(e).lower()
        if "unable to open database file" in message:
            path = parsed.database if parsed is not None else "?"
            return f"cannot open SQLite database file {path!r}: check that its directory exists and is writable"
        if "database is locked" in message:
            return (
                f"SQLite database {where} is locked by another writer for longer than busy_timeout: "
                "retry, raise busy_timeout, or move to PostgreSQL/MySQL for many writers"
            )
    driver = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    return f"database error for {redact(url)}: {_detail(driver, parsed)}"


def _pool_exhausted(e: BaseException, where: str, size: int | None, timeout: float | None) -> str:
    limit = _POOL_LIMIT.search(str(e))
    if limit is not None:
        overflow = int(limit.group(2))
        size = size if size is not None else int(limit.group(1)) + max(overflow, 0)
        timeout = timeout if timeout is not None else float(limit.group(3))
    pool = "connection pool" if size is None else f"pool of {size} connection{'' if size == 1 else 's'}"
    after = f" after {timeout:g}s" if timeout is not None else ""
    return (
        f"{pool} exhausted{after} waiting for a connection to {where}; raise DATABASE_POOL_MAX "
        "or look for long transactions holding connections"
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, the driver error SQLAlchemy wrapped, and their causes/contexts (no cycles)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 20:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        orig = getattr(e, "orig", None)
        for nxt in (orig, e.__cause__, e.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def _mysql_code(e: BaseException) -> int | None:
    """PyMySQL errors carry the server error number as args[0]."""
    if type(e).__module__.startswith("pymysql") and e.args and isinstance(e.args[0], int):
        return e.args[0]
    return None


def _where(url: URL | None) -> str:
    if url is None:
        return "the configured database"
    if url.get_backend_name() == "sqlite":
        return f"sqlite:///{url.database or ':memory:'}"
    host = url.host or "localhost"
    port = url.port or _DEFAULT_PORTS.get(url.get_backend_name()) or "?"
    return f"{url.get_backend_name()} server {host}:{port}"


def _detail(e: BaseException, url: URL | None) -> str:
    """The driver's own text, first line only, with the password scrubbed in case the driver echoed it."""
    text = (str(e).strip().splitlines() or [""])[0]
    if url is not None and url.password:
        text = text.replace(str(url.password), "***")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
