"""Database backups and SQLite restores, per engine.

* SQLite: the online backup API (`sqlite3.Connection.backup`) in a worker thread. It copies a consistent
  snapshot of a live database while other processes keep writing (WAL readers do not block writers), and the
  copy is switched to rollback-journal mode so the backup is one self-contained file.
* PostgreSQL: `pg_dump --format=custom` (restore with `pg_restore`); MariaDB/MySQL: `mariadb-dump`
  (or `mysqldump`) with `--single-transaction`. The password goes to the client through its environment
  (PGPASSWORD / MYSQL_PWD), never on the command line, and is scrubbed from any error text. A missing client
  is a `BackupError` that says what to install.

Every backup is written to a temporary file in the target directory and renamed into place once complete
(and fsynced), so a crash never leaves a truncated file under a backup's name. File names carry the UTC time
(`<prefix>-20261123T020000Z.sqlite3`), so names sort by age and `rotate()` keeps the newest N.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.to_thread
from sqlalchemy.engine import URL, make_url

from storage.revision import VERSION_TABLE

__all__ = ["BackupError", "BackupFile", "backup_database", "backup_name", "restore_sqlite", "rotate"]

_SUFFIXES = {"sqlite": ".sqlite3", "postgresql": ".dump", "mysql": ".sql"}
_STAMP = "%Y%m%dT%H%M%SZ"
_NAME = re.compile(r"^(?P<prefix>.+)-(?P<stamp>\d{8}T\d{6}Z)(?P<suffix>\.sqlite3|\.dump|\.sql)$")
_REQUIRED_TABLES = ("scheduler_runs", "scheduler_state", "scheduler_leases", "scheduler_nodes", VERSION_TABLE)


class BackupError(RuntimeError):
    """A backup or restore that cannot be done; the message says what to check. Never contains a password."""


@dataclass(frozen=True)
class BackupFile:
    path: Path
    size: int  # bytes
    engine: str


def backup_name(prefix: str, engine: str, at: datetime) -> str:
    """`scheduler-20261123T020000Z.sqlite3`: sortable by time, the suffix says how to restore it."""
    return f"{prefix}-{at.astimezone(UTC).strftime(_STAMP)}{_SUFFIXES[engine]}"


def _engine_of(url: URL) -> str:
    backend = url.get_backend_name()
    if backend in ("mysql", "mariadb"):
        return "mysql"
    if backend not in _SUFFIXES:
        raise BackupError(f"backups of {backend} databases are not supported (sqlite, postgresql, mysql are)")
    return backend


async def backup_database(url: str | URL, directory: Path, *, at: datetime, prefix: str = "scheduler") -> BackupFile:
    """Write a backup of the database at `url` into `directory`, atomically; return its path and size."""
    target_url = make_url(url) if isinstance(url, str) else url
    engine = _engine_of(target_url)
    final = directory / backup_name(prefix, engine, at)
    await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
    if await anyio.Path(final).exists():
        raise BackupError(f"{final} already exists (two backups in the same second?)")
    temp = directory / f".{final.name}.partial-{os.getpid()}"
    try:
        if engine == "sqlite":
            await anyio.to_thread.run_sync(_sqlite_backup, _sqlite_path(target_url), temp)
        elif engine == "postgresql":
            await _dump(_pg_dump_command(target_url, temp), _pg_env(target_url), target_url.password)
        else:
            await _dump(_mysql_dump_command(target_url, temp), _mysql_env(target_url), target_url.password)
        await anyio.to_thread.run_sync(_publish, temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return BackupFile(final, (await anyio.Path(final).stat()).st_size, engine)


def _publish(temp: Path, final: Path) -> None:
    """fsync the file, rename it into place, fsync the directory: the name appears only with all its bytes."""
    with open(temp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rotate(directory: Path, *, prefix: str = "scheduler", keep: int) -> list[Path]:
    """Delete all but the newest `keep` backups named `<prefix>-<time><suffix>`; return what was deleted.

    Only files this module names are touched, so other files in the directory are safe.
    """
    if keep < 1:
        raise ValueError("keep must be 1 or more")
    ours = sorted(
        (path for path in directory.iterdir() if (m := _NAME.match(path.name)) and m["prefix"] == prefix),
        key=lambda path: path.name.rsplit("-", 1)[1],
    )
    doomed = ours[:-keep]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


# --------------------------------------------------------------------------------------------- SQLite


def _sqlite_path(url: URL) -> Path:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        raise BackupError("an in-memory SQLite database cannot be backed up; use a file (sqlite:///path)")
    return Path(database)


def _sqlite_backup(source: Path, temp: Path) -> None:
    if not source.exists():
        raise BackupError(f"SQLite database {source} does not exist")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(temp)
        try:
            # pages=-1: the whole database in one step, i.e. one read transaction, one consistent snapshot.
            # (Stepwise copies restart whenever another connection writes, and may never finish.)
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal beside it
            _check_integrity(dst, temp)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite backup of {source} failed: {exc}") from exc
    finally:
        src.close()


def _check_integrity(conn: sqlite3.Connection, where: Path) -> None:
    result = conn.execute("PRAGMA quick_check").fetchone()
    if not result or result[0] != "ok":
        raise BackupError(f"{where}: SQLite integrity check failed: {result[0] if result else 'no answer'}")


def restore_sqlite(backup: Path, target: Path, *, keep_previous: bool = True) -> Path | None:
    """Replace the SQLite database at `target` with the backup's content; return the safety copy's path.

    The backup is checked first (integrity, scheduler tables present). The copy goes through the backup API
    *into* the target, so it happens under SQLite's own locking, works whether the target uses WAL or not,
    and no process ever sees a half-restored file. With `keep_previous`, the current database is first saved
    beside it as `<target>.before-restore-<time>`. Stop the schedulers before restoring.
    """
    if not backup.is_file():
        raise BackupError(f"backup file {backup} does not exist")
    try:
        src = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"{backup}: cannot open it as SQLite: {exc}") from exc
    try:
        try:
            _check_integrity(src, backup)
            tables = {row[0] for row in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"{backup} is not a SQLite database backup: {exc}") from exc
        missing = [name for name in _REQUIRED_TABLES if name not in tables]
        if missing:
            raise BackupError(f"{backup} is not a scheduler database backup: tables {', '.join(missing)} are missing")
        previous: Path | None = None
        target.parent.mkdir(parents=True, exist_ok=True)
        if keep_previous and target.exists():
            stamp = datetime.now(UTC).strftime(_STAMP)
            previous = target.with_name(f"{target.name}.before-restore-{stamp}")
            _sqlite_backup(target, previous)
        dst = sqlite3.connect(target, timeout=30)
        try:
            src.backup(dst, pages=-1)
            with dst:
                _close_the_past(dst)
        except sqlite3.Error as exc:
            raise BackupError(f"restore into {target} failed (is a scheduler still writing to it?): {exc}") from exc
        finally:
            dst.close()
        return previous
    finally:
        src.close()


_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'"  # the text form SQLAlchemy stores, see dbclock


def _close_the_past(conn: sqlite3.Connection) -> None:
    """No process of the backup's moment is alive after a restore: runs it shows in flight (the backup's own
    run, at least) become `abandoned`, its leases free and its nodes stopped, so nothing waits on ghosts."""
    conn.execute(
        f"UPDATE scheduler_runs SET status = 'abandoned', finished_at = {_SQLITE_NOW}, "
        "error = 'in flight when the backup was taken; closed by restore' WHERE status = 'running'"
    )
    conn.execute("UPDATE scheduler_leases SET holder = NULL, run_id = NULL, expires_at = NULL")
    conn.execute(f"UPDATE scheduler_nodes SET stopped_at = {_SQLITE_NOW} WHERE stopped_at IS NULL")


# --------------------------------------------------------------------------------------------- dump clients


def _which(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise BackupError(
        f"{names[0]} is not installed, so this database cannot be backed up: install the client "
        f"({'postgresql-client' if names[0] == 'pg_dump' else 'mariadb-client'}, matching the server's version) "
        "on the node that runs database-backup"
    )


def _pg_dump_command(url: URL, temp: Path) -> list[str]:
    return [_which("pg_dump"), "--format=custom", "--no-owner", "--no-password", f"--file={temp}"]


def _pg_env(url: URL) -> dict[str, str]:
    values = {
        "PGHOST": url.host,
        "PGPORT": url.port,
        "PGUSER": url.username,
        "PGPASSWORD": url.password,
        "PGDATABASE": url.database,
    }
    sslmode = url.query.get("sslmode") or url.query.get("ssl")
    if isinstance(sslmode, str) and sslmode:
        values["PGSSLMODE"] = {"true": "require", "false": "disable"}.get(sslmode, sslmode)
    return {k: str(v) for k, v in values.items() if v not in (None, "")}


def _mysql_dump_command(url: URL, temp: Path) -> list[str]:
    command = [
        _which("mariadb-dump", "mysqldump"),
        "--single-transaction",
        "--routines",
        "--triggers",
        f"--result-file={temp}",
    ]
    if url.host:
        command.append(f"--host={url.host}")
    if url.port:
        command.append(f"--port={url.port}")
    if url.username:
        command.append(f"--user={url.username}")
    if not url.database:
        raise BackupError("the database URL names no database to back up")
    return [*command, url.database]


def _mysql_env(url: URL) -> dict[str, str]:
    return {"MYSQL_PWD": str(url.password)} if url.password else {}


async def _dump(command: list[str], env: Mapping[str, str], password: str | None) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MYSQL"))}
    done = await anyio.run_process(command, env={**base, **env}, check=False)
    if done.returncode != 0:
        message = " ".join(done.stderr.decode(errors="replace").split())[-500:] or "no message"
        if password:
            message = message.replace(password, "***")
        raise BackupError(f"{Path(command[0]).name} exited {done.returncode}: {message}")
