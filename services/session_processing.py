"""session-processing: AI analysis of sessions that have messages, by the local or the OpenAI provider.

Work items are the sessions' AI_ANALYSIS ``processing_status`` rows (PENDING, company ACTIVE), claimed with
:func:`storage.claims.claim_batch` (SKIP LOCKED; SQLite fallback), so any number of replicas share the
backlog and no session is analysed twice. Every result is written in one transaction that first re-checks
the claim (``owned_by``, lease still live): a replica whose lease ran out writes nothing.

Providers and modes (``SESSION_PROCESSING_PROVIDER`` / ``SESSION_PROCESSING_MODE``):

* ``local`` + ``direct`` (default): the offline analyzer; a claimed batch is analysed in memory and written in
  one transaction of about ten statements, with a zero-cost ``ai_processing_requests`` row per session.
* ``openai`` + ``direct``: one chat completion per session, at most ``SESSION_PROCESSING_CONCURRENCY`` in
  flight; AI_ANALYSIS is IN_PROGRESS (claim held, lease renewed) while the call runs. Every call is recorded
  with its cost. Invalid output is retried, then the stage FAILS with the validator's reason; an API that is
  still unavailable after the SDK's retries defers the session (PENDING, claimable again after
  ``retry_after``) until ``max_attempts`` is reached, then FAILS it.
* ``batch`` (either provider): the session is enqueued for the OpenAI Batch API - an
  ``ai_processing_requests`` row PENDING_BATCHING with the company's model - and AI_ANALYSIS becomes
  IN_PROGRESS with its claim cleared; batch-processing owns it from there.

Sessions without messages are SKIPPED on both AI stages ("no messages"), never left PENDING (the original let
them starve the 50-slot window forever). ``SESSION_PROCESSING_BATCH_SIZE`` caps the sessions of one run;
``0`` means no cap: batches are claimed until the backlog is empty (the original silently capped at 50).

Reaping: a replica that dies in direct mode leaves AI_ANALYSIS rows IN_PROGRESS with a claim whose lease
stops being renewed. Every run first puts such rows (IN_PROGRESS, claim set, lease expired by the database
clock) back to PENDING, counting the attempt; at ``max_attempts`` they are FAILED instead, so a session that
kills its analyser cannot loop forever. Batch-mode rows have no claim, so they are never reaped here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, TypeVar

import anyio
from pydantic import Field, model_validator
from sqlalchemy import and_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.analysis import local
from domain.analysis.apply import apply_analyses, fail_analysis, skip_analysis
from domain.analysis.costs import price_for
from domain.analysis.prompt import Transcript, load_transcripts
from domain.analysis.requests import record_free, record_request
from domain.analysis.schema import InvalidAnalysis, SessionAnalysis
from domain.analysis.settings import OpenAISettings

if TYPE_CHECKING:  # the SDK is imported when the openai provider is used, not by every process that registers us
    from domain.analysis.openai_direct import Call, OpenAIAnalyzer
from domain.model import CompanyStatus, RequestStatus, Stage, StageStatus
from domain.tables import ai_processing_requests, companies, processing_status, sessions
from services.base import BaseSchedulerService, RunContext
from services.config import Milliseconds, Seconds, ServiceConfig
from services.registry import register
from storage.claims import MAX_LIMIT, ClaimSpec, claim_batch, db_utc_now, db_utc_now_plus, release, renew
from storage.engine import writer

logger = logging.getLogger(__name__)

CLAIM = ClaimSpec(
    processing_status,
    processing_status.c.id,
    processing_status.c.claimed_by,
    processing_status.c.claimed_until,
    order_by=(processing_status.c.created_at, processing_status.c.id),
)
NO_MESSAGES = "no messages"
T = TypeVar("T")
_LOCAL_CHUNK = 500  # sessions per claim and write transaction with the local provider or in batch mode
_STORE_TRIES = 3  # deadlocks / "database is locked" are retried in place
_CLEANUP_SECONDS = 10.0
_ERROR_CHARS = 2000


class SessionProcessingConfig(ServiceConfig):
    interval: str = "0 * * * *"
    timeout: Milliseconds = timedelta(minutes=30)
    batch_size: int = Field(default=50, ge=0, le=10_000_000)  # sessions per run; 0 = until the backlog is empty
    concurrency: int = Field(default=5, ge=1, le=100)  # OpenAI calls in flight (direct mode)
    provider: Literal["local", "openai"] = "local"
    mode: Literal["direct", "batch"] = "direct"
    claim_lease: Seconds = timedelta(minutes=5)  # renewed while held; a dead replica's sessions return after it
    invalid_output_retries: int = Field(default=2, ge=0, le=10)  # extra calls when the answer does not validate
    max_attempts: int = Field(default=3, ge=1, le=100)  # reaps / API outages before a session is FAILED
    retry_after: Seconds = timedelta(minutes=5)  # a session deferred by an API outage waits this long

    @model_validator(mode="after")
    def _openai_needs_key(self) -> SessionProcessingConfig:
        if self.provider == "openai" and self.mode == "direct" and not OpenAISettings().api_key:
            raise ValueError("provider 'openai' needs OPENAI_API_KEY (set it, or SESSION_PROCESSING_PROVIDER=local)")
        return self


@dataclass
class Report:
    analysed: int = 0
    skipped: int = 0
    failed: int = 0
    deferred: int = 0
    enqueued: int = 0
    lost: int = 0  # claim passed to another owner before the write
    reaped: int = 0
    errors: int = 0  # unexpected errors: the session's lease runs out and the reaper retries it
    batches: int = 0
    calls: int = 0

    @property
    def settled(self) -> int:
        return self.analysed + self.skipped + self.failed + self.enqueued


@register
class SessionProcessingService(BaseSchedulerService):
    type_name = "session-processing"
    display_name = "Session Processing Scheduler"
    description = (
        "Analyses sessions with messages (local offline analyzer, or OpenAI directly or via the Batch API), "
        "extracts their questions and records costs; sessions without messages are skipped."
    )
    config_class = SessionProcessingConfig

    async def run_once(self, ctx: RunContext) -> None:
        assert isinstance(self.config, SessionProcessingConfig)
        run = SessionProcessing(
            self.store.engine,
            owner=f"{self.store.node}:{ctx.run_id}",
            config=self.config,
            now=ctx.clock.now,
            should_continue=ctx.still_owner,
            on_settled=ctx.add_items,
            log=ctx.logger,
        )
        report = await run.run()
        ctx.logger.info(
            "session processing (%s, %s): %d analysed, %d enqueued, %d skipped (no messages), %d failed, "
            "%d deferred, %d lost, %d reaped, %d OpenAI call(s)",
            self.config.provider,
            self.config.mode,
            report.analysed,
            report.enqueued,
            report.skipped,
            report.failed,
            report.deferred,
            report.lost,
            report.reaped,
            report.calls,
        )


class SessionProcessing:
    """One run: reap, then claim and process batches until the cap, the backlog or the run ends."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        owner: str,
        config: SessionProcessingConfig,
        now: Callable[[], datetime],
        should_continue: Callable[[], bool] = lambda: True,
        on_settled: Callable[[int], None] | None = None,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] = logger,
        analyzer: OpenAIAnalyzer | None = None,
        chunk: int | None = None,
    ) -> None:
        self.engine = engine
        self.writes = writer(engine)
        self.owner = owner
        self.config = config
        self.now = now
        self.should_continue = should_continue
        self.on_settled = on_settled
        self.log = log
        self.report = Report()
        self.settings = OpenAISettings()
        self.analyzer = analyzer
        self.lease = config.claim_lease.total_seconds()
        self.chunk = chunk  # sessions per claim; None: 500 (local, batch mode) or 4 x concurrency (openai)

    def _settled(self, count: int) -> None:
        if count and self.on_settled is not None:
            self.on_settled(count)

    # ---------------------------------------------------------------------------------------------- the run

    async def run(self) -> Report:
        await self._reap()
        direct_openai = self.config.provider == "openai" and self.config.mode == "direct"
        own_analyzer = direct_openai and self.analyzer is None
        if own_analyzer:
            from domain.analysis.openai_direct import OpenAIAnalyzer

            self.analyzer = OpenAIAnalyzer(self.settings, invalid_retries=self.config.invalid_output_retries)
        try:
            remaining = self.config.batch_size or None  # None: no cap
            chunk = self.chunk or (self.config.concurrency * 4 if direct_openai else _LOCAL_CHUNK)
            while self.should_continue() and (remaining is None or remaining > 0):
                limit = min(chunk, remaining, MAX_LIMIT) if remaining is not None else min(chunk, MAX_LIMIT)
                claimed = await self._claim(limit)
                if not claimed:
                    break
                self.report.batches += 1
                if remaining is not None:
                    remaining -= len(claimed)
                if direct_openai:
                    await self._openai_batch(claimed)  # hands back its own unfinished sessions
                    continue
                try:
                    if self.config.mode == "batch":
                        await self._enqueue(claimed)
                    else:
                        await self._local_batch(claimed)
                except BaseException:  # cancelled (timeout, shutdown) or failed: give the claims back at once
                    await self._release(list(claimed))
                    raise
        finally:
            if own_analyzer and self.analyzer is not None:
                with anyio.CancelScope(shield=True):
                    await self.analyzer.aclose()
        return self.report

    async def _claim(self, limit: int) -> dict[str, str]:
        """Claim up to ``limit`` pending AI_ANALYSIS rows; status row id -> session id."""
        eligible = and_(
            processing_status.c.stage == Stage.AI_ANALYSIS.value,
            processing_status.c.status == StageStatus.PENDING.value,
            processing_status.c.session_id.in_(
                select(sessions.c.id)
                .join(companies, companies.c.id == sessions.c.company_id)
                .where(companies.c.status == CompanyStatus.ACTIVE.value)
            ),
        )
        ids = await claim_batch(
            self.engine, CLAIM, owner=self.owner, limit=limit, lease_seconds=self.lease, where=eligible
        )
        if not ids:
            return {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(processing_status.c.id, processing_status.c.session_id).where(processing_status.c.id.in_(ids))
            )
            return {str(status_id): str(session_id) for status_id, session_id in rows}

    async def _reap(self) -> None:
        """IN_PROGRESS rows whose claim expired (a crashed direct-mode replica) go back to PENDING, or FAILED
        once they have used up ``max_attempts``."""
        now = self.now()
        stuck = and_(
            processing_status.c.stage == Stage.AI_ANALYSIS.value,
            processing_status.c.status == StageStatus.IN_PROGRESS.value,
            processing_status.c.claimed_by.is_not(None),
            processing_status.c.claimed_until < db_utc_now(),
        )
        last = self.config.max_attempts - 1
        async with self.writes.begin() as conn:
            failed = await conn.execute(
                update(processing_status)
                .where(stuck, processing_status.c.retry_count >= last)
                .values(
                    status=StageStatus.FAILED.value,
                    completed_at=now,
                    error_message=f"abandoned by a crashed worker {self.config.max_attempts} times",
                    retry_count=processing_status.c.retry_count + 1,
                    claimed_by=None,
                    claimed_until=None,
                    updated_at=now,
                )
            )
            reaped = await conn.execute(
                update(processing_status)
                .where(stuck, processing_status.c.retry_count < last)
                .values(
                    status=StageStatus.PENDING.value,
                    started_at=None,
                    error_message="abandoned by a crashed worker; retried",
                    retry_count=processing_status.c.retry_count + 1,
                    claimed_by=None,
                    claimed_until=None,
                    updated_at=now,
                )
            )
        self.report.reaped += int(reaped.rowcount or 0)
        self.report.failed += int(failed.rowcount or 0)
        if reaped.rowcount or failed.rowcount:
            self.log.warning(
                "reaped %d abandoned AI analysis(es) back to pending, %d failed after %d attempts",
                reaped.rowcount,
                failed.rowcount,
                self.config.max_attempts,
            )

    # ---------------------------------------------------------------------------------------------- helpers

    async def _transcripts(self, claimed: Mapping[str, str]) -> dict[str, Transcript]:
        async with self.engine.connect() as conn:
            return await load_transcripts(conn, claimed.values(), default_model=self.settings.openai_model)

    async def _owned(self, conn: AsyncConnection, status_ids: list[str]) -> set[str]:
        """Of ``status_ids``, the rows this run still holds (live lease), locked until commit; their session ids."""
        rows = await conn.execute(
            select(processing_status.c.session_id).where(CLAIM.owned(self.owner, status_ids)).with_for_update()
        )
        return {str(r[0]) for r in rows}

    async def _write(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work(conn)`` in a write transaction, retrying lock conflicts in place."""
        for attempt in range(1, _STORE_TRIES + 1):
            try:
                async with self.writes.begin() as conn:
                    return await work(conn)
            except OperationalError:
                if attempt == _STORE_TRIES:
                    raise
                await anyio.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    async def _release(self, status_ids: list[str]) -> None:
        if not status_ids:
            return
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + _CLEANUP_SECONDS
            try:
                await release(self.engine, CLAIM, status_ids, owner=self.owner)
            except Exception as exc:  # the leases then run out on their own
                self.log.warning("could not release %d session claim(s): %s", len(status_ids), exc)

    # ---------------------------------------------------------------------------------------------- local

    async def _local_batch(self, claimed: dict[str, str]) -> None:
        transcripts = await self._transcripts(claimed)
        analyses: dict[str, SessionAnalysis] = {}
        failures: dict[str, str] = {}
        empty: list[str] = []
        for session_id in claimed.values():
            transcript = transcripts.get(session_id)
            if transcript is None or not transcript.messages:
                empty.append(session_id)
                continue
            try:
                analyses[session_id] = local.analyze(transcript)
            except InvalidAnalysis as exc:  # a rule produced something the schema refuses: fail that session only
                failures[session_id] = f"local analyzer: {exc}"
        status_ids = list(claimed)
        now = self.now()

        async def store(conn: AsyncConnection) -> set[str]:
            owned = await self._owned(conn, status_ids)
            mine = {s: a for s, a in analyses.items() if s in owned}
            await apply_analyses(conn, mine, now=now)
            await record_free(conn, sorted(mine), model=local.MODEL_NAME, now=now)
            await skip_analysis(conn, [s for s in empty if s in owned], NO_MESSAGES, now=now)
            for session_id, reason in failures.items():
                if session_id in owned:
                    await fail_analysis(conn, session_id, reason, now=now)
            return owned

        try:
            owned = await self._write(store)
        except Exception as exc:
            self.log.warning(
                "batch write failed (%s: %s); writing its %d sessions one by one", type(exc).__name__, exc, len(claimed)
            )
            await self._local_one_by_one(claimed, analyses, failures, empty)
            return
        self._count(owned, analyses, failures, empty, len(claimed))

    def _count(
        self,
        owned: set[str],
        analyses: Mapping[str, SessionAnalysis],
        failures: Mapping[str, str],
        empty: list[str],
        total: int,
    ) -> None:
        analysed = sum(1 for s in analyses if s in owned)
        skipped = sum(1 for s in empty if s in owned)
        failed = sum(1 for s in failures if s in owned)
        self.report.analysed += analysed
        self.report.skipped += skipped
        self.report.failed += failed
        self.report.lost += total - len(owned)
        self._settled(analysed + skipped + failed)

    async def _local_one_by_one(
        self,
        claimed: dict[str, str],
        analyses: dict[str, SessionAnalysis],
        failures: dict[str, str],
        empty: list[str],
    ) -> None:
        """Fallback when a batch's transaction fails: each session alone, so one bad row cannot hold back the
        others; a session whose own write fails is FAILED with the error."""
        for status_id, session_id in claimed.items():
            if not self.should_continue():
                await self._release([status_id])
                continue
            analysis = analyses.get(session_id)
            reason = failures.get(session_id)
            try:
                owned = await self._store_one(status_id, session_id, analysis, reason)
            except Exception as exc:
                reason = f"could not store the analysis: {type(exc).__name__}: {exc}"[:_ERROR_CHARS]
                self.log.error("session %s: %s", session_id, reason)
                owned = await self._store_one(status_id, session_id, analysis, reason)
            if not owned:
                self.report.lost += 1
                continue
            if reason is not None:
                self.report.failed += 1
            elif analysis is not None:
                self.report.analysed += 1
            else:
                self.report.skipped += 1
            self._settled(1)

    async def _store_one(
        self, status_id: str, session_id: str, analysis: SessionAnalysis | None, reason: str | None
    ) -> bool:
        """One session's local result (failure reason, analysis, or no messages), fenced; False if not ours."""
        now = self.now()

        async def one(conn: AsyncConnection) -> bool:
            if session_id not in await self._owned(conn, [status_id]):
                return False
            if reason is not None:
                await fail_analysis(conn, session_id, reason, now=now)
            elif analysis is not None:
                await apply_analyses(conn, {session_id: analysis}, now=now)
                await record_free(conn, [session_id], model=local.MODEL_NAME, now=now)
            else:
                await skip_analysis(conn, [session_id], NO_MESSAGES, now=now)
            return True

        return await self._write(one)

    # ---------------------------------------------------------------------------------------------- batch mode

    async def _enqueue(self, claimed: dict[str, str]) -> None:
        transcripts = await self._transcripts(claimed)
        status_ids = list(claimed)
        now = self.now()

        async def store(conn: AsyncConnection) -> tuple[int, int, int]:
            owned = await self._owned(conn, status_ids)
            waiting = await conn.execute(
                select(ai_processing_requests.c.session_id).where(
                    ai_processing_requests.c.session_id.in_(sorted(owned)),
                    ai_processing_requests.c.processing_status.in_(
                        (RequestStatus.PENDING_BATCHING.value, RequestStatus.BATCHING_IN_PROGRESS.value)
                    ),
                )
            )
            already = {str(r[0]) for r in waiting}
            enqueued: list[str] = []
            empty: list[str] = []
            for session_id in sorted(owned):
                transcript = transcripts.get(session_id)
                if transcript is None or not transcript.messages:
                    empty.append(session_id)
                    continue
                if session_id not in already:
                    await record_request(
                        conn,
                        session_id=session_id,
                        model=transcript.model,
                        status=RequestStatus.PENDING_BATCHING,
                        usage=None,
                        price=None,
                        usd_to_eur=self.settings.ai_usd_to_eur_rate,
                        openai=None,
                        success=False,
                        error=None,
                        now=now,
                    )
                enqueued.append(session_id)
            if enqueued:
                await conn.execute(
                    update(processing_status)
                    .where(
                        processing_status.c.session_id.in_(enqueued),
                        processing_status.c.stage == Stage.AI_ANALYSIS.value,
                    )
                    .values(
                        status=StageStatus.IN_PROGRESS.value,
                        started_at=now,
                        error_message=None,
                        details={"mode": "batch"},
                        claimed_by=None,  # batch-processing owns the session now; never reaped here
                        claimed_until=None,
                        updated_at=now,
                    )
                )
            await skip_analysis(conn, empty, NO_MESSAGES, now=now)
            return len(enqueued), len(empty), len(owned)

        enqueued, skipped, owned = await self._write(store)
        self.report.enqueued += enqueued
        self.report.skipped += skipped
        self.report.lost += len(claimed) - owned
        self._settled(enqueued + skipped)

    # ---------------------------------------------------------------------------------------------- openai

    async def _openai_batch(self, claimed: dict[str, str]) -> None:
        transcripts = await self._transcripts(claimed)
        status_ids = list(claimed)
        now = self.now()
        empty = [s for s in claimed.values() if s not in transcripts or not transcripts[s].messages]

        async def start(conn: AsyncConnection) -> set[str]:
            owned = await self._owned(conn, status_ids)
            await skip_analysis(conn, [s for s in empty if s in owned], NO_MESSAGES, now=now)
            working = [s for s in owned if s not in empty]
            if working:
                await conn.execute(
                    update(processing_status)
                    .where(
                        processing_status.c.session_id.in_(working),
                        processing_status.c.stage == Stage.AI_ANALYSIS.value,
                    )
                    .values(status=StageStatus.IN_PROGRESS.value, started_at=now, error_message=None, updated_at=now)
                )
            return owned

        owned = await self._write(start)
        skipped = sum(1 for s in empty if s in owned)
        self.report.skipped += skipped
        self.report.lost += len(claimed) - len(owned)
        self._settled(skipped)
        open_ids = {status_id for status_id, s in claimed.items() if s in owned and s not in empty}
        limiter = anyio.CapacityLimiter(self.config.concurrency)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_leases, open_ids)
                async with anyio.create_task_group() as work:
                    for status_id in sorted(open_ids, key=status_ids.index):
                        work.start_soon(self._openai_one, status_id, transcripts[claimed[status_id]], limiter, open_ids)
                tg.cancel_scope.cancel()
        finally:
            if open_ids:  # stopped or cancelled halfway: back to PENDING and released, for any replica
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + _CLEANUP_SECONDS
                    try:
                        await self._unstart(sorted(open_ids))
                    except Exception as exc:
                        self.log.warning("could not hand back %d session(s): %s", len(open_ids), exc)

    async def _unstart(self, status_ids: list[str]) -> None:
        now = self.now()
        async with self.writes.begin() as conn:
            await conn.execute(
                update(processing_status)
                .where(CLAIM.owned(self.owner, status_ids, live=False))
                .values(
                    status=StageStatus.PENDING.value,
                    started_at=None,
                    claimed_by=None,
                    claimed_until=None,
                    updated_at=now,
                )
            )

    async def _keep_leases(self, open_ids: set[str]) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            if open_ids:
                try:
                    await renew(self.engine, CLAIM, sorted(open_ids), owner=self.owner, lease_seconds=self.lease)
                except Exception as exc:  # writes are fenced: a lapsed lease costs a redone call, never a duplicate
                    self.log.warning("could not renew %d session claim(s): %s", len(open_ids), exc)

    async def _record_call(self, session_id: str, call: Call) -> None:
        self.report.calls += 1
        now = self.now()

        async def store(conn: AsyncConnection) -> None:
            price = await price_for(conn, call.model, now) if call.usage is not None else None
            await record_request(
                conn,
                session_id=session_id,
                model=call.model,
                status=RequestStatus.PROCESSING_COMPLETE if call.success else RequestStatus.PROCESSING_FAILED,
                usage=call.usage,
                price=price,
                usd_to_eur=self.settings.ai_usd_to_eur_rate,
                openai=call.response,
                success=call.success,
                error=call.error,
                now=now,
            )

        await self._write(store)

    async def _openai_one(
        self, status_id: str, transcript: Transcript, limiter: anyio.CapacityLimiter, open_ids: set[str]
    ) -> None:
        assert self.analyzer is not None
        session_id = transcript.session_id
        async with limiter:
            if not self.should_continue():
                return  # handed back by the batch's cleanup

            try:
                outcome, reason = await self._openai_settle(status_id, transcript)
            except Exception as exc:  # e.g. the database went away: left to the lease, then the reaper
                open_ids.discard(status_id)  # no longer renewed nor handed back
                self.report.errors += 1
                self.log.error(
                    "session %s: %s: %s; retried once its claim expires", session_id, type(exc).__name__, exc
                )
                return
            open_ids.discard(status_id)
            if outcome == "lost":
                self.report.lost += 1
                self.log.warning("session %s: claim lost before its write (lease expired); result dropped", session_id)
                return
            setattr(self.report, outcome, getattr(self.report, outcome) + 1)
            if outcome == "failed":
                self.log.warning("session %s: analysis failed: %s", session_id, reason)
            elif outcome == "deferred":
                self.log.warning("session %s: deferred: %s", session_id, reason)
            self._settled(1)

    async def _openai_settle(self, status_id: str, transcript: Transcript) -> tuple[str, str | None]:
        """Analyse one session and write the outcome, fenced: (analysed|deferred|failed|lost, reason)."""
        assert self.analyzer is not None
        session_id = transcript.session_id

        async def on_call(call: Call) -> None:
            await self._record_call(session_id, call)

        verdict = await self.analyzer.analyze(transcript, on_call)
        now = self.now()

        async def store(conn: AsyncConnection) -> str:
            if session_id not in await self._owned(conn, [status_id]):
                return "lost"
            if verdict.analysis is not None:
                await apply_analyses(conn, {session_id: verdict.analysis}, now=now)
                return "analysed"
            reason = verdict.reason or "no usable answer"
            if verdict.transient:
                tried = await conn.execute(
                    select(processing_status.c.retry_count).where(processing_status.c.id == status_id)
                )
                if int(tried.scalar_one() or 0) + 1 < self.config.max_attempts:
                    await conn.execute(
                        update(processing_status)
                        .where(processing_status.c.id == status_id)
                        .values(
                            status=StageStatus.PENDING.value,
                            started_at=None,
                            error_message=reason[:_ERROR_CHARS],
                            retry_count=processing_status.c.retry_count + 1,
                            # keep the claim until then, so no run spins on an API that is down
                            claimed_until=db_utc_now_plus(self.config.retry_after.total_seconds()),
                            updated_at=now,
                        )
                    )
                    return "deferred"
            await fail_analysis(conn, session_id, reason, now=now)
            return "failed"

        return await self._write(store), verdict.reason


__all__ = ["CLAIM", "SessionProcessing", "SessionProcessingConfig", "SessionProcessingService"]
