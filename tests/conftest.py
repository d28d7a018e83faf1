"""Fixtures shared by the whole test suite: real databases (SQLite, PostgreSQL, MariaDB) and the anyio backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import db


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """Admin URL of the PostgreSQL server; skips (fails under CI=true) when it is unreachable."""
    return db.require_server(db.POSTGRES_ADMIN_URL)


@pytest.fixture(scope="session")
def mysql_server() -> str:
    """Admin URL of the MariaDB/MySQL server; skips (fails under CI=true) when it is unreachable."""
    return db.require_server(db.MYSQL_ADMIN_URL)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file database, e.g. ``sqlite:////tmp/.../test.db``."""
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A freshly created, empty PostgreSQL database (``postgresql://postgres@127.0.0.1:5432/t_...``)."""
    url = db.create_database(postgres_server)
    yield url
    db.drop_database(postgres_server, url)


@pytest.fixture
def mysql_url(mysql_server: str) -> Iterator[str]:
    """A freshly created, empty MariaDB database (``mysql://root@127.0.0.1:3306/t_...``)."""
    url = db.create_database(mysql_server)
    yield url
    db.drop_database(mysql_server, url)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test against all three engines: a fresh empty database's plain URL."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url
