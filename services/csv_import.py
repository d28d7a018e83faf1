"""csv-import: imports every ACTIVE company's CSV feed into session imports.

Thin: settings and the run; the work is :func:`domain.csv_import.import_all`. A company that fails (HTTP
error, missing file, bad secret reference) is logged and reported, and the others still import; the run
itself fails only when every company failed, because then the cause is most likely shared (the network, the
database, a secret store) and the failure streak should show it. Items counted: rows imported (inserted plus
updated).
"""

from __future__ import annotations

from datetime import timedelta

import anyio
from pydantic import Field

from domain.model import DuplicateMode
from services.base import BaseSchedulerService, RunContext
from services.config import Milliseconds, ServiceConfig
from services.registry import register

WORK_BUDGET = 0.8  # share of the run timeout spent starting companies; the rest lets started ones finish


class CsvImportFailed(RuntimeError):
    """Every company of the run failed."""


class CsvImportConfig(ServiceConfig):
    interval: str = "*/10 * * * *"  # CSV_IMPORT_INTERVAL
    timeout: Milliseconds = timedelta(minutes=5)  # CSV_IMPORT_TIMEOUT (bare number = ms), the whole run
    batch_size: int = Field(default=10, ge=1, le=1000)  # CSV_IMPORT_BATCH_SIZE: companies per page
    max_concurrent: int = Field(default=5, ge=1, le=100)  # CSV_IMPORT_MAX_CONCURRENT: companies at once
    duplicate_mode: DuplicateMode = DuplicateMode.SKIP  # CSV_IMPORT_DUPLICATE_MODE: skip | update
    fetch_timeout: Milliseconds = timedelta(minutes=1)  # CSV_IMPORT_FETCH_TIMEOUT: one feed download
    fetch_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1)  # CSV_IMPORT_FETCH_MAX_BYTES
    rows_per_statement: int = Field(default=1000, ge=1, le=1000)  # rows per multi-row INSERT


@register
class CsvImportService(BaseSchedulerService):
    type_name = "csv-import"
    display_name = "CSV Import Scheduler"
    description = (
        "Imports every ACTIVE company's CSV feed (http(s) with Basic auth, or file://) into session imports; "
        "duplicates skipped or updated (duplicate_mode), bad lines recorded in import_rejections."
    )
    config_class = CsvImportConfig

    async def run_once(self, ctx: RunContext) -> None:
        assert isinstance(self.config, CsvImportConfig)
        c = self.config
        # Imported on first run: a process that only registers this service never loads httpx, yaml, ...
        from domain.csv_import import ImportSettings, import_all

        settings = ImportSettings(
            duplicate_mode=c.duplicate_mode,
            fetch_timeout=c.fetch_timeout.total_seconds(),
            fetch_max_bytes=c.fetch_max_bytes,
            rows_per_statement=c.rows_per_statement,
            batch_size=c.batch_size,
            max_concurrent=c.max_concurrent,
        )
        budget_end = anyio.current_time() + c.timeout.total_seconds() * WORK_BUDGET

        def should_continue() -> bool:
            return ctx.still_owner() and anyio.current_time() < budget_end

        report = await import_all(
            self.store.engine, settings, now=ctx.clock.now, should_continue=should_continue, log=ctx.logger
        )
        ctx.add_items(report.total("inserted") + report.total("updated"))
        ctx.logger.info("csv import: %s", report.summary())
        if report.all_failed:
            reasons = "; ".join(f"{r.name}: {r.error}" for r in report.failed[:5])
            raise CsvImportFailed(f"all {len(report.results)} company import(s) failed: {reasons}")
