"""Throwaway databases on the real PostgreSQL / MariaDB servers for tests.

Every test gets its own freshly created database (``t_<pid>_<uuid8>``), so parallel runs never collide.
The servers' admin URLs default to the local test servers and can be overridden with TEST_POSTGRES_URL /
TEST_MYSQL_URL (any database on the server; it is only used to CREATE/DROP the test databases).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest
from sqlalchemy import exc, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from storage.errors import explain
from storage.url import async_url

T = TypeVar("T")

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_ADMIN_URL = os.environ.get("TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
PROBE_TIMEOUT = 3.0

_NAMES = {"postgresql": "PostgreSQL", "mysql": "MariaDB/MySQL"}


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run async setup code from a sync fixture, on its own thread and loop (never the test's loop)."""

    async def main() -> T:
        return await fn()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


def require_server(admin_url: str) -> str:
    """Return ``admin_url`` if the server answers; otherwise skip (or fail when CI=true) the test."""
    url = make_url(admin_url)
    reason = run(lambda: _probe(admin_url))
    if reason is None:
        return admin_url
    message = (
        f"{_NAMES.get(url.get_backend_name(), url.get_backend_name())} at {url.host}:{url.port} unreachable: {reason}"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: real database tests must run)", pytrace=False)
    pytest.skip(message)


def create_database(admin_url: str) -> str:
    """Create a uniquely named empty database; return its plain URL (``postgresql://...``/``mysql://...``)."""
    admin = make_url(admin_url)
    name = f"t_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    if admin.get_backend_name() == "postgresql":
        run(lambda: _admin_exec(admin_url, f'CREATE DATABASE "{name}"'))
    else:
        run(lambda: _admin_exec(admin_url, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    plain = admin.set(drivername=admin.get_backend_name(), database=name)
    return plain.render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    """Drop a database made by create_database, even if a test left connections open."""
    name = make_url(url).database or ""
    if not name.startswith("t_"):  # never drop anything we did not create
        raise ValueError(f"refusing to drop {name!r}: not a test database")
    if make_url(admin_url).get_backend_name() == "postgresql":
        run(lambda: _admin_exec(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    else:
        run(lambda: _drop_mysql(admin_url, name))


async def _probe(admin_url: str) -> str | None:
    """None if we can connect and SELECT 1 within PROBE_TIMEOUT, else a readable reason."""
    engine = _admin_engine(admin_url)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT + 1):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception as exc:
        return explain(exc, admin_url)
    finally:
        await engine.dispose()
    return None


def _admin_engine(admin_url: str) -> AsyncEngine:
    url: URL = async_url(admin_url)
    timeout = {"asyncpg": "timeout", "aiomysql": "connect_timeout"}[url.get_driver_name()]
    return create_async_engine(
        url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args={timeout: PROBE_TIMEOUT}
    )


async def _admin_exec(admin_url: str, sql: str) -> None:
    engine = _admin_engine(admin_url)
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql(sql)
    finally:
        await engine.dispose()


async def _drop_mysql(admin_url: str, name: str) -> None:
    # MariaDB has no DROP ... FORCE: end leftover sessions first so the DROP cannot wait on their locks.
    engine = _admin_engine(admin_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT id FROM information_schema.processlist WHERE db = :db AND id <> CONNECTION_ID()"),
                {"db": name},
            )
            for (session_id,) in rows.all():
                with contextlib.suppress(exc.DBAPIError):  # already gone
                    await conn.exec_driver_sql(f"KILL {int(session_id)}")
            await conn.exec_driver_sql("SET SESSION lock_wait_timeout = 30")
            await conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        await engine.dispose()
