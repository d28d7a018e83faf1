"""Run the packaged Alembic migrations through the async engine (no alembic.ini, no sync drivers).

    await upgrade("sqlite:///./var/app.db")        # at startup / `manager migrate`
    await current("postgresql://...")                # "0001_core", or None for an empty database

Developers add a revision with:  python -m storage.migrate revision --url sqlite:///./var/dev.db \\
    --rev-id 0002_something -m "what changed"     (the database must be at head first; autogenerates).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.engine import create_engine
from storage.url import redact

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Not "alembic_version": the schedulers may share a database with an application that has its own Alembic.
VERSION_TABLE = "scheduler_alembic_version"
_LOCK_NAME = "livedash_schedulers_migrate"
_PG_LOCK_KEY = 0x5C4ED  # any constant; pg_advisory_xact_lock takes a bigint


def target_metadata() -> MetaData:
    """The MetaData migrations are generated from: storage.schema plus, when present, domain.tables and jobs.tables.

    Other modules register their tables on ``storage.schema.metadata``; importing them here makes sure
    autogenerate and the schema tests see every table.
    """
    from storage import schema

    if importlib.util.find_spec("domain") is not None and importlib.util.find_spec("domain.tables") is not None:
        importlib.import_module("domain.tables")
    if importlib.util.find_spec("jobs") is not None and importlib.util.find_spec("jobs.tables") is not None:
        importlib.import_module("jobs.tables")
    return schema.metadata


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Autogenerate only looks at our own tables, never at other tables sharing the database."""
    if type_ == "table":
        return name in target_metadata().tables
    return True


def alembic_config() -> Config:
    """Alembic configuration built in code, pointing at the migrations shipped inside the package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("file_template", "%%(rev)s")  # file name = revision id, e.g. 0001_core.py
    return cfg


def head() -> str | None:
    """The newest revision shipped with this code."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(url: str, revision: str = "head", *, connect_args: Mapping[str, Any] | None = None) -> None:
    """Migrate the database at ``url`` to ``revision``; safe to run from several nodes at once.

    ``connect_args`` carries driver options the URL cannot (TLS contexts from StorageSettings).
    """
    engine = _migration_engine(url, connect_args)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_locked_upgrade, revision)
    finally:
        await engine.dispose()


async def current(url: str) -> str | None:
    """The revision the database at ``url`` is at, or None if it was never migrated."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: MigrationContext.configure(
                    sync, opts={"version_table": VERSION_TABLE}
                ).get_current_revision()
            )
    finally:
        await engine.dispose()


async def revision(url: str, message: str, rev_id: str) -> None:
    """Autogenerate a new revision file by comparing the (up-to-date) database at ``url`` with the metadata."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_with_connection, command.revision, message=message, autogenerate=True, rev_id=rev_id)
    finally:
        await engine.dispose()


def _migration_engine(url: str, connect_args: Mapping[str, Any] | None = None) -> AsyncEngine:
    engine = create_engine(url, pool_size=1, connect_args=connect_args)
    if engine.dialect.name == "sqlite":
        # Batch migrations recreate SQLite tables (copy, drop, rename); with foreign keys enforced, dropping a
        # referenced table would cascade or fail. SQLite's documented procedure: foreign_keys=OFF (only
        # possible outside a transaction, hence at connect), migrate, then PRAGMA foreign_key_check.
        @event.listens_for(engine.sync_engine, "connect")
        def _fk_off(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=OFF")
            cursor.close()

        # Take the write lock at BEGIN so two processes migrating at once queue up instead of failing.
        engine = engine.execution_options(sqlite_begin_immediate=True)
    return engine


def _locked_upgrade(conn: Connection, revision: str) -> None:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
    elif dialect in ("mysql", "mariadb"):
        got = conn.exec_driver_sql(f"SELECT GET_LOCK('{_LOCK_NAME}', 300)").scalar()
        if got != 1:
            raise TimeoutError("another process has been migrating this database for 300s")
    try:
        _with_connection(conn, command.upgrade, revision)
        if dialect == "sqlite":
            problems = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if problems:
                raise RuntimeError(f"migration left foreign key violations: {problems[:5]}")
    finally:
        if dialect in ("mysql", "mariadb"):
            conn.exec_driver_sql(f"SELECT RELEASE_LOCK('{_LOCK_NAME}')")


def _with_connection(conn: Connection, fn: Any, *args: Any, **kwargs: Any) -> None:
    """Run an alembic command with env.py reusing ``conn`` (see the 'connection' attribute in env.py)."""
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    fn(cfg, *args, **kwargs)


def _main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m storage.migrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("upgrade", "current", "revision"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True)
        if name == "revision":
            p.add_argument("--rev-id", required=True, help="e.g. 0002_add_thing")
            p.add_argument("-m", "--message", required=True)
    args = parser.parse_args()
    if args.cmd == "upgrade":
        asyncio.run(upgrade(args.url))
        print(f"{redact(args.url)} is at {head()}")
    elif args.cmd == "current":
        print(asyncio.run(current(args.url)))
    else:
        asyncio.run(revision(args.url, args.message, args.rev_id))


if __name__ == "__main__":
    _main()
