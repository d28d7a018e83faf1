"""import-processing: turns raw CSV rows (session imports) into sessions, messages and stage statuses.

Thin: settings and the run; the work is :func:`domain.import_processing.process_imports`.
"""

from __future__ import annotations

from datetime import timedelta

import anyio
from pydantic import Field

from services.base import BaseSchedulerService, RunContext
from services.config import Milliseconds, Seconds, ServiceConfig
from services.registry import register
from storage.claims import MAX_LIMIT

WORK_BUDGET = 0.8  # share of the run timeout spent starting new imports; the rest lets in-flight ones finish


class ImportProcessingConfig(ServiceConfig):
    interval: str = "*/5 * * * *"
    timeout: Milliseconds = timedelta(minutes=5)  # IMPORT_PROCESSING_TIMEOUT (bare number = ms)
    batch_size: int = Field(default=50, ge=1, le=MAX_LIMIT)  # imports claimed per batch
    concurrency: int = Field(default=5, ge=1, le=100)  # imports in flight at once
    claim_lease: Seconds = timedelta(minutes=5)  # renewed while held; a dead node's imports return after it
    transcript_timeout: Milliseconds = timedelta(seconds=30)  # per transcript request
    transcript_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    transcript_retries: int = Field(default=2, ge=0, le=10)  # in-run retries of transient fetch errors
    transcript_retry_delay: Milliseconds = timedelta(seconds=1)  # doubles with each retry
    max_attempts: int = Field(default=3, ge=1, le=100)  # runs an import may be deferred before it is settled
    defer: Seconds = timedelta(minutes=5)  # how long a deferred import waits


@register
class ImportProcessingService(BaseSchedulerService):
    type_name = "import-processing"
    display_name = "Import Processing Scheduler"
    description = (
        "Turns session imports into sessions and messages: fetches transcripts (Basic auth, time limit, size cap, "
        "retries), parses them, records each stage; imports that cannot become sessions are marked failed."
    )
    config_class = ImportProcessingConfig

    async def run_once(self, ctx: RunContext) -> None:
        assert isinstance(self.config, ImportProcessingConfig)
        c = self.config
        # Imported on first run: a process that only registers this service never loads httpx and the parsers.
        from domain.import_processing import Outcome, Settings, process_imports

        settings = Settings(
            batch_size=c.batch_size,
            concurrency=c.concurrency,
            lease_seconds=c.claim_lease.total_seconds(),
            fetch_time_limit=c.transcript_timeout.total_seconds(),
            fetch_max_bytes=c.transcript_max_bytes,
            fetch_attempts=c.transcript_retries + 1,
            fetch_backoff=c.transcript_retry_delay.total_seconds(),
            max_attempts=c.max_attempts,
            defer_seconds=c.defer.total_seconds(),
        )

        def settled(_outcome: Outcome) -> None:
            ctx.add_items(1)

        # Stop taking new work at 80% of the timeout and end the run as a success: a large backlog is worked
        # off over several runs instead of every run timing out (and the service counting failures into ERROR).
        budget_end = anyio.current_time() + c.timeout.total_seconds() * WORK_BUDGET

        def should_continue() -> bool:
            return ctx.still_owner() and anyio.current_time() < budget_end

        report = await process_imports(
            self.store.engine,
            owner=f"{self.store.node}:{ctx.run_id}",
            settings=settings,
            now=ctx.clock.now,
            should_continue=should_continue,
            on_settled=settled,
            log=ctx.logger,
        )
        counts = ", ".join(f"{outcome.value} {n}" for outcome, n in report.outcomes.items() if n)
        ctx.logger.info(
            "import processing: %s; %d message(s), %d transcript(s) fetched, %d transcript failure(s)",
            counts or "nothing to do",
            report.messages,
            report.transcripts_fetched,
            report.transcript_failures,
        )
