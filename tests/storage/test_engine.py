"""Engine settings that matter in production, and error messages an operator can act on."""

from __future__ import annotations

import socket
import ssl
import sys
import threading
from pathlib import Path

import anyio
import pytest
from sqlalchemy import exc
from sqlalchemy.engine import make_url

from storage.engine import create_engine, ping
from storage.errors import StorageConfigError, explain

pytestmark = pytest.mark.anyio


async def _pragma(url: str, name: str, busy_timeout_ms: int = 5000) -> object:
    engine = create_engine(url, busy_timeout_ms=busy_timeout_ms)
    try:
        async with engine.connect() as conn:
            return (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
    finally:
        await engine.dispose()


async def test_sqlite_pragmas(sqlite_url: str) -> None:
    assert await _pragma(sqlite_url, "journal_mode") == "wal"
    assert await _pragma(sqlite_url, "busy_timeout") == 5000
    assert await _pragma(sqlite_url, "busy_timeout", busy_timeout_ms=1234) == 1234
    assert await _pragma(sqlite_url, "foreign_keys") == 1
    assert await _pragma(sqlite_url, "synchronous") == 1  # NORMAL


async def test_sqlite_creates_parent_directory(tmp_path: Path) -> None:
    target = tmp_path / "var" / "nested" / "app.db"
    engine = create_engine(f"sqlite:///{target}")
    try:
        await ping(engine)
    finally:
        await engine.dispose()
    assert target.exists()


async def test_sqlite_memory_database() -> None:
    engine = create_engine("sqlite:///:memory:", pool_size=3)  # pool_size is ignored for the StaticPool
    try:
        await ping(engine)
    finally:
        await engine.dispose()


async def test_sqlite_savepoint_rollback_is_part_of_the_transaction(sqlite_url: str) -> None:
    """Without our BEGIN hook, pysqlite/aiosqlite run SAVEPOINT outside the transaction and this fails."""
    engine = create_engine(sqlite_url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        async with engine.connect() as conn:
            outer = await conn.begin()
            await conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            inner = await conn.begin_nested()
            await conn.exec_driver_sql("INSERT INTO t VALUES (2)")
            await inner.rollback()
            nested = await conn.begin_nested()
            await conn.exec_driver_sql("INSERT INTO t VALUES (3)")
            await nested.commit()
            assert (await conn.exec_driver_sql("SELECT x FROM t ORDER BY x")).scalars().all() == [1, 3]
            await outer.rollback()  # also undoes the released savepoint
            assert (await conn.exec_driver_sql("SELECT count(*) FROM t")).scalar() == 0
    finally:
        await engine.dispose()


async def test_sqlite_transactional_ddl(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("CREATE TABLE gone (x INTEGER)")
            await conn.rollback()
            names = await conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE name = 'gone'")
            assert names.all() == []
    finally:
        await engine.dispose()


async def test_ping_server_databases(postgres_url: str, mysql_url: str) -> None:
    for url in (postgres_url, mysql_url):
        engine = create_engine(url)
        try:
            await ping(engine)
        finally:
            await engine.dispose()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _explain_connect(url: str) -> str:
    engine = create_engine(url, connect_timeout=5)
    try:
        await ping(engine)
    except Exception as error:
        return explain(error, url)
    finally:
        await engine.dispose()
    raise AssertionError(f"connecting to {url} unexpectedly worked")


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
async def test_explain_connection_refused(scheme: str) -> None:
    port = _closed_port()
    message = await _explain_connect(f"{scheme}://app:top-secret@127.0.0.1:{port}/app")
    assert f"127.0.0.1:{port}" in message
    assert "is the server running? check host/port/firewall" in message
    assert "top-secret" not in message


async def test_explain_unknown_database(postgres_server: str, mysql_server: str) -> None:
    for server in (postgres_server, mysql_server):
        url = make_url(server).set(database="no_such_db_x")
        message = await _explain_connect(url.render_as_string(hide_password=False))
        assert "database 'no_such_db_x' does not exist" in message
        assert f"{url.host}:{url.port}" in message
        assert "CREATE DATABASE" in message


async def test_explain_authentication_failed(postgres_server: str, mysql_server: str) -> None:
    for server in (postgres_server, mysql_server):
        url = make_url(server).set(username="no_such_user", password="top-secret")
        message = await _explain_connect(url.render_as_string(hide_password=False))
        assert "authentication failed for user 'no_such_user'" in message
        assert f"on database {url.database!r}" in message
        assert "top-secret" not in message


@pytest.mark.parametrize(
    ("scheme", "module", "extra"), [("postgresql", "asyncpg", "[postgresql]"), ("mysql", "aiomysql", "[mysql]")]
)
def test_explain_missing_driver(monkeypatch: pytest.MonkeyPatch, scheme: str, module: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import <module>` raise ModuleNotFoundError
    url = f"{scheme}://app:top-secret@db.example:1234/app"
    with pytest.raises(ImportError) as info:
        create_engine(url)
    message = explain(info.value, url)
    assert f"pip install 'livedash-schedulers{extra}'" in message
    assert "top-secret" not in message


def test_explain_pool_timeout_certificate_and_config() -> None:
    url = "postgresql://app:top-secret@db.example:5432/app"
    assert "pool" in explain(exc.TimeoutError("QueuePool limit reached"), url)
    cert = explain(ssl.SSLCertVerificationError("certificate verify failed: self-signed"), url)
    assert "certificate" in cert
    assert "db.example:5432" in cert
    assert explain(StorageConfigError("bad scheme"), url) == "bad scheme"


def test_explain_fallback_never_leaks_password() -> None:
    url = "postgresql://app:top-secret@db.example/app"
    message = explain(RuntimeError("driver said: password top-secret rejected"), url)
    assert "top-secret" not in message
    assert "app:***@db.example" in message


async def test_explain_sqlite_unopenable(tmp_path: Path) -> None:
    message = await _explain_connect(f"sqlite:///{tmp_path}")  # the "file" is a directory
    assert f"cannot open SQLite database file {str(tmp_path)!r}" in message
    # aiosqlite quirk: after a failed connect its worker thread stops on its own and then reports to our event
    # loop; let it finish before the test's loop closes, or it dies with "Event loop is closed".
    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name:
            await anyio.to_thread.run_sync(thread.join, 5)
