"""database-backup: a timestamped, atomically written backup of the scheduler's database, keeping the newest N.

Daily at 02:00 UTC by default (DATABASE_BACKUP_INTERVAL). The run record says how it went: a success counts
the backup's size in KiB as its items (`itemsProcessed`; the run record has no free-form field, and KiB
keeps multi-gigabyte backups within the column's 32-bit range), a failure carries the reason as its error,
for example a missing `pg_dump`. The file name and exact byte size are in the run's log line.

Settings: DATABASE_BACKUP_DIRECTORY (default ./var/backups), DATABASE_BACKUP_KEEP (default 7),
DATABASE_BACKUP_PREFIX (default scheduler). Restore a SQLite backup with `python -m manager restore FILE`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field

from services.base import BaseSchedulerService, RunContext
from services.config import Milliseconds, ServiceConfig
from services.registry import register
from storage.backup import backup_database, rotate


class BackupConfig(ServiceConfig):
    interval: str = "0 2 * * *"
    timeout: Milliseconds = timedelta(hours=1)
    max_retries: int = 1
    directory: str = "./var/backups"
    keep: int = Field(default=7, ge=1, le=10_000)
    prefix: str = Field(default="scheduler", pattern=r"^[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)*$")
    critical: bool = False


@register
class DatabaseBackupService(BaseSchedulerService):
    type_name = "database-backup"
    display_name = "Database Backup"
    description = "Backs up the scheduler database (SQLite backup API, pg_dump, mariadb-dump) and keeps the newest N."
    config_class = BackupConfig

    async def run_once(self, ctx: RunContext) -> None:
        assert isinstance(self.config, BackupConfig)
        directory = Path(self.config.directory)
        backup = await backup_database(self.store.engine.url, directory, at=ctx.clock.now(), prefix=self.config.prefix)
        ctx.add_items(-(-backup.size // 1024))  # KiB, rounded up: a non-empty backup never records 0
        removed = rotate(directory, prefix=self.config.prefix, keep=self.config.keep)
        ctx.logger.info(
            "backup %s written (%d bytes, %s); rotation removed %d old backup(s), keeping %d",
            backup.path,
            backup.size,
            backup.engine,
            len(removed),
            self.config.keep,
        )
