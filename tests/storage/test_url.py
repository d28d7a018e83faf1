"""URL mapping from what users write to the async drivers we run."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from storage.errors import StorageConfigError
from storage.url import async_url, redact


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///./var/x.db", "sqlite+aiosqlite:///./var/x.db"),
        ("sqlite:////abs/path/x.db", "sqlite+aiosqlite:////abs/path/x.db"),
        ("sqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
        ("sqlite+pysqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u:pw@db:5432/app", "postgresql+asyncpg://u:pw@db:5432/app"),
        ("postgres://u:pw@db/app", "postgresql+asyncpg://u:pw@db/app"),
        ("postgresql+psycopg2://u@db/app", "postgresql+asyncpg://u@db/app"),
        ("postgresql://u@db/app?sslmode=require", "postgresql+asyncpg://u@db/app?ssl=require"),
        ("mysql://u:pw@db:3306/app", "mysql+aiomysql://u:pw@db:3306/app"),
        ("mariadb://u:pw@db/app", "mysql+aiomysql://u:pw@db/app"),
        ("mysql+pymysql://u@db/app?charset=utf8mb4", "mysql+aiomysql://u@db/app?charset=utf8mb4"),
        ("mssql://u:pw@db/app", "mssql+aioodbc://u:pw@db/app"),
        # Already async: unchanged.
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql+asyncpg://u@db/app", "postgresql+asyncpg://u@db/app"),
        ("mysql+aiomysql://u@db/app", "mysql+aiomysql://u@db/app"),
        ("mysql+asyncmy://u@db/app", "mysql+asyncmy://u@db/app"),
    ],
)
def test_async_url_mapping(given: str, expected: str) -> None:
    assert async_url(given) == make_url(expected)


def test_async_url_keeps_the_password() -> None:
    assert async_url("postgresql://u:s%40cret@db/app").password == "s@cret"


@pytest.mark.parametrize("given", ["oracle://scott:tiger-pw@db/app", "redis://h:6379/0"])
def test_unknown_scheme_names_it_and_lists_valid_ones(given: str) -> None:
    with pytest.raises(StorageConfigError) as info:
        async_url(given)
    message = str(info.value)
    assert given.split(":")[0] in message
    for scheme in ("sqlite", "postgresql", "mysql", "mariadb"):
        assert scheme in message
    assert "tiger-pw" not in message
    assert isinstance(info.value, ValueError)


def test_unknown_driver_is_rejected() -> None:
    with pytest.raises(StorageConfigError, match="unknown driver 'nope'"):
        async_url("postgresql+nope://u:pw@db/app")


@pytest.mark.parametrize("given", ["./var/app.db", "", "not a url"])
def test_unparseable_url(given: str) -> None:
    with pytest.raises(StorageConfigError, match="not a database URL"):
        async_url(given)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:hunter2@db:5432/app", "postgresql://u:***@db:5432/app"),
        ("mysql+aiomysql://root:p%40ss@db/app", "mysql+aiomysql://root:***@db/app"),
        ("postgresql://u@db/app", "postgresql://u@db/app"),
        ("sqlite:///./var/x.db", "sqlite:///./var/x.db"),
        ("weird://u:hunter2@", "weird://u:***@"),
    ],
)
def test_redact(given: str, expected: str) -> None:
    assert redact(given) == expected
    assert redact(make_url(given)) == expected


def test_redact_unparseable_string_still_hides_password() -> None:
    assert redact("postgresql://u:hunter2@db:notaport/app") == "postgresql://u:***@db:notaport/app"
