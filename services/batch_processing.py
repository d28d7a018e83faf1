"""batch-processing: the OpenAI Batch API path of the AI analysis (see :mod:`domain.batches`).

Each run: recover batches whose submission was not recorded, batch the PENDING_BATCHING requests that
session-processing (``SESSION_PROCESSING_MODE=batch``) enqueued, poll the in-flight batches and apply the
finished ones. The original's four hard-coded cron jobs become one service with two knobs:

* ``BATCH_PROCESSING_INTERVAL`` (``*/5 * * * *``): how often a run starts, i.e. how often new requests are
  batched (and at the latest how often in-flight batches are polled).
* ``BATCH_PROCESSING_CHECK_INTERVAL`` (2 min): while batches are in flight, a run keeps polling them every
  check interval for up to ``BATCH_PROCESSING_POLL_WINDOW`` (4 min, below the 5-min interval so the run ends
  before the next one is due; ``0`` = poll once per run). So by default batches are polled at :00, :02,
  :04, :05, :07, ... as in the original, and results are applied as soon as a poll sees them finished. A
  run with nothing in flight ends at once. The poll window must stay below ``BATCH_PROCESSING_TIMEOUT``.

Without ``OPENAI_API_KEY`` the service is a no-op, not an error: the demo runs with the local analyzer and
no batch requests, so each run logs one line saying batch processing is off (a warning when requests are
waiting for it, naming how many) and succeeds with 0 items. Other settings: ``BATCH_PROCESSING_MAX_REQUESTS``
(50,000, the API's cap), ``BATCH_PROCESSING_MAX_BYTES`` (200 MB, the API's cap), ``BATCH_PROCESSING_MAX_ATTEMPTS``
(3 batch submissions per request), ``BATCH_PROCESSING_SUBMIT_GRACE`` (10 min: an unrecorded submission is
looked up after this), ``BATCH_PROCESSING_CLAIM_LEASE`` (10 min). The OpenAI connection (key, base URL,
timeout, SDK retries, USD→EUR rate) is shared with direct mode: ``OPENAI_*`` and ``AI_USD_TO_EUR_RATE``.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, model_validator
from sqlalchemy import func, select

from domain.analysis.settings import OpenAISettings
from domain.batches import API_MAX_BYTES, API_MAX_REQUESTS, BatchProcessor, BatchSettings
from domain.model import RequestStatus
from domain.tables import ai_processing_requests
from services.base import BaseSchedulerService, RunContext
from services.config import Milliseconds, Seconds, ServiceConfig, format_duration
from services.registry import register

OFF_REASON = "OPENAI_API_KEY is not set: batch processing is off"


class BatchProcessingConfig(ServiceConfig):
    interval: str = "*/5 * * * *"
    timeout: Milliseconds = timedelta(minutes=10)
    check_interval: Seconds = timedelta(minutes=2)
    poll_window: Seconds = timedelta(minutes=4)
    max_requests: int = Field(default=API_MAX_REQUESTS, ge=1, le=API_MAX_REQUESTS)
    max_bytes: int = Field(default=API_MAX_BYTES, ge=1024, le=API_MAX_BYTES)
    max_attempts: int = Field(default=3, ge=1, le=100)
    submit_grace: Seconds = timedelta(minutes=10)
    claim_lease: Seconds = timedelta(minutes=10)

    @model_validator(mode="after")
    def _windows(self) -> BatchProcessingConfig:
        if self.check_interval <= timedelta(0):
            raise ValueError("check_interval must be positive")
        if self.poll_window >= self.timeout:
            raise ValueError(
                f"poll_window ({format_duration(self.poll_window)}) must be shorter than timeout "
                f"({format_duration(self.timeout)})"
            )
        if self.claim_lease <= timedelta(0):
            raise ValueError("claim_lease must be positive")
        return self


@register
class BatchProcessingService(BaseSchedulerService):
    type_name = "batch-processing"
    display_name = "Batch Processing Scheduler"
    description = (
        "Sends PENDING_BATCHING analysis requests to the OpenAI Batch API (one model per batch), polls the "
        "batches, applies their results with 50% batch costs and retries failed, expired or cancelled batches."
    )
    config_class = BatchProcessingConfig

    async def run_once(self, ctx: RunContext) -> None:
        assert isinstance(self.config, BatchProcessingConfig)
        openai = OpenAISettings()
        if not openai.api_key:
            await self._report_off(ctx)
            return
        settings = BatchSettings(
            max_requests=self.config.max_requests,
            max_bytes=self.config.max_bytes,
            max_attempts=self.config.max_attempts,
            submit_grace=self.config.submit_grace,
            claim_lease_seconds=self.config.claim_lease.total_seconds(),
            default_model=openai.openai_model,
            usd_to_eur=openai.ai_usd_to_eur_rate,
        )
        from domain.openai_batch_client import BatchClient  # the SDK only when a batch may really be sent

        async with BatchClient(
            api_key=openai.api_key,
            base_url=openai.openai_base_url,
            timeout=openai.openai_timeout,
            max_retries=openai.openai_max_retries,
        ) as client:
            processor = BatchProcessor(
                self.store.engine,
                client,
                owner=f"{self.store.node}:{ctx.run_id}",
                settings=settings,
                now=ctx.clock.now,
                log=ctx.logger,
                should_continue=ctx.still_owner,
            )
            await processor.recover()
            await processor.create()
            started = ctx.clock.now()
            window = self.config.poll_window.total_seconds()
            step = self.config.check_interval.total_seconds()
            settled = 0
            while True:
                await processor.poll()
                ctx.add_items(processor.report.settled - settled)
                settled = processor.report.settled
                if not ctx.still_owner() or (ctx.clock.now() - started).total_seconds() + step > window:
                    break
                if not await processor.in_flight():
                    break
                await ctx.clock.sleep(step)
        report = processor.report
        ctx.logger.info(
            "batch processing: %d batch(es) created (%d requests), %d adopted, %d resubmitted, %d poll(s) "
            "(%d failed), %d applied, %d failed, %d released for retry, %d batch(es) finished",
            report.batches_created,
            report.requests_submitted,
            report.adopted,
            report.resubmitted,
            report.polled,
            report.poll_errors,
            report.applied,
            report.failed,
            report.released,
            report.batches_finished,
        )

    async def _report_off(self, ctx: RunContext) -> None:
        async with self.store.engine.connect() as conn:
            waiting = await conn.scalar(
                select(func.count())
                .select_from(ai_processing_requests)
                .where(ai_processing_requests.c.processing_status == RequestStatus.PENDING_BATCHING.value)
            )
        if waiting:
            ctx.logger.warning("%s; %d request(s) are waiting for it", OFF_REASON, waiting)
        else:
            ctx.logger.info("%s; nothing to do", OFF_REASON)
