"""run-history-retention: deletes run records older than a configurable age, in bounded batches."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from services.base import BaseSchedulerService, RunContext
from services.config import Milliseconds, Seconds, ServiceConfig
from services.registry import register


class RetentionConfig(ServiceConfig):
    interval: str = "17 * * * *"
    timeout: Milliseconds = timedelta(minutes=10)
    max_age: Seconds = timedelta(days=30)
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    critical: bool = False


@register
class RunHistoryRetentionService(BaseSchedulerService):
    type_name = "run-history-retention"
    display_name = "Run History Retention"
    description = "Deletes run records older than max_age (RUN_HISTORY_RETENTION_MAX_AGE) in bounded batches."
    config_class = RetentionConfig

    async def run_once(self, ctx: RunContext) -> None:
        assert isinstance(self.config, RetentionConfig)
        cutoff = ctx.clock.now() - self.config.max_age
        # Bounded batches keep each transaction short, so replicas and writers are never blocked for long.
        while ctx.still_owner():
            deleted = await self.store.delete_runs_before(cutoff, batch_size=self.config.batch_size)
            ctx.add_items(deleted)
            if deleted < self.config.batch_size:
                break
        ctx.logger.info("deleted %d run record(s) older than %s", ctx.items_processed, cutoff.isoformat())
