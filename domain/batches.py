"""The OpenAI Batch API flow: pending analysis requests → one-model batches → results applied to sessions.

Every step is safe to repeat and to interrupt, which is what the original lacked (reference §2.4, defect 6):

* **create**: PENDING_BATCHING requests are claimed (:mod:`storage.claims`, SKIP LOCKED), grouped by model
  (OpenAI requires one model per batch file) and cut by request count and input bytes. The batch row
  (PENDING) and the links of its requests (BATCHING_IN_PROGRESS, ``batch_id``, ``attempts + 1``) are written in
  ONE transaction *before* anything is uploaded; then the JSONL is uploaded, the batch created with
  ``metadata.local_batch_id`` = our id, and its ids recorded.
* **recover**: a batch row still PENDING/UPLOADING after ``submit_grace`` (a crash or a database failure
  between submission and bookkeeping) is looked up remotely by ``metadata.local_batch_id`` and adopted, or
  resubmitted when OpenAI has no such batch: never orphaned, never submitted twice.
* **poll**: every OpenAI status is mapped; ``cancelling`` and unknown statuses are logged and left for the
  next poll; an HTTP error (after the SDK's own retries) never fails a batch, the next poll tries again.
* **results**: output AND error files are read; each output line is validated (``parse_analysis``) and
  applied (``apply_analyses``, a chunk of lines per transaction) with its usage and cost at the Batch API's
  50 % discount; a line is applied once only (its request must still be BATCHING_IN_PROGRESS in this batch,
  checked in the same transaction); an invalid line or an error-file line fails its request and AI_ANALYSIS
  with the reason; requests in neither file are released for another batch.
* **failed / expired / cancelled** batches: whatever partial output they have is applied like above, and
  the rest of their requests go back to PENDING_BATCHING while ``attempts < max_attempts``, else
  PROCESSING_FAILED with AI_ANALYSIS FAILED ("gave up after N attempts"). No request is ever left
  BATCHING_IN_PROGRESS behind a finished batch: the release commits with the batch's final status.

A submission OpenAI refuses (4xx) fails its batch and releases the requests like a failed batch; a batch
OpenAI no longer knows (404 on a poll) likewise. Batch rows and requests carry claims (:mod:`storage.claims`),
so two runs, on any replicas, never submit, recover or apply the same batch at once.

Cost columns: ``prompt_token_cost`` / ``completion_token_cost`` hold the per-token prices actually paid
(after the discount), so ``total_cost_usd = prompt_tokens * prompt_token_cost + completion_tokens *
completion_token_cost`` holds for batch and direct rows alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import anyio
from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from domain.analysis.apply import apply_analyses, fail_analysis, skip_analysis
from domain.analysis.costs import Price, Usage, cost_of, price_for
from domain.analysis.prompt import Transcript, chat_body, load_transcripts
from domain.analysis.schema import InvalidAnalysis, SessionAnalysis, parse_analysis
from domain.batch_api import BatchAPIError, RemoteBatch
from domain.model import BatchStatus, RequestStatus
from domain.tables import ai_batch_requests, ai_processing_requests
from storage.claims import MAX_LIMIT, ClaimSpec, claim_batch, db_utc_now_plus, release

logger = logging.getLogger(__name__)

API_MAX_REQUESTS = 50_000  # OpenAI's per-batch limits
API_MAX_BYTES = 200 * 1024 * 1024
BATCH_DISCOUNT = 0.5
MAX_ERROR_CHARS = 2000
ENDPOINT = "/v1/chat/completions"
_IDS = 1000  # ids per IN list
_RECOVER_PER_RUN = 100
_POLL_PER_RUN = 1000
_CLEANUP_SECONDS = 10.0
_LIST_SLACK_SECONDS = 86_400  # remote batches older than our row minus this cannot be ours (clock skew)
_EXPIRED_LINE_CODES = frozenset({"batch_expired", "batch_cancelled"})  # not the line's fault: retry it

REQUEST_CLAIM = ClaimSpec(
    ai_processing_requests,
    ai_processing_requests.c.id,
    ai_processing_requests.c.claimed_by,
    ai_processing_requests.c.claimed_until,
    order_by=(ai_processing_requests.c.model, ai_processing_requests.c.requested_at, ai_processing_requests.c.id),
)
BATCH_CLAIM = ClaimSpec(
    ai_batch_requests,
    ai_batch_requests.c.id,
    ai_batch_requests.c.claimed_by,
    ai_batch_requests.c.claimed_until,
    order_by=(ai_batch_requests.c.created_at, ai_batch_requests.c.id),
)

# OpenAI status -> ours. ``cancelling`` and anything unknown are absent: the row is left for the next poll.
STATUS_MAP: Mapping[str, BatchStatus] = {
    "validating": BatchStatus.VALIDATING,
    "in_progress": BatchStatus.IN_PROGRESS,
    "finalizing": BatchStatus.FINALIZING,
    "completed": BatchStatus.COMPLETED,
    "failed": BatchStatus.FAILED,
    "expired": BatchStatus.FAILED,
    "cancelled": BatchStatus.CANCELLED,
}
_FINAL_REMOTE = frozenset({"completed", "failed", "expired", "cancelled"})
SUBMITTING = (BatchStatus.PENDING.value, BatchStatus.UPLOADING.value)
IN_FLIGHT = (
    BatchStatus.VALIDATING.value,
    BatchStatus.IN_PROGRESS.value,
    BatchStatus.FINALIZING.value,
    BatchStatus.COMPLETED.value,  # finished remotely, results not applied yet
)


class BatchAPI(Protocol):
    """What the flow needs from OpenAI (:class:`~domain.openai_batch_client.BatchClient`)."""

    async def upload(self, filename: str, content: bytes) -> str: ...
    async def create(self, input_file_id: str, *, local_batch_id: str) -> RemoteBatch: ...
    async def retrieve(self, batch_id: str) -> RemoteBatch: ...
    async def find(self, local_ids: set[str], *, created_since: int) -> dict[str, RemoteBatch]: ...
    async def content(self, file_id: str) -> bytes: ...


@dataclass(frozen=True)
class BatchSettings:
    max_requests: int = API_MAX_REQUESTS  # per batch
    max_bytes: int = API_MAX_BYTES  # input file size per batch
    max_attempts: int = 3  # batch submissions per request before it fails for good
    submit_grace: timedelta = timedelta(minutes=10)  # PENDING/UPLOADING older than this are recovered
    claim_lease_seconds: float = 600.0
    default_model: str = "gpt-4o"  # sessions whose company has no model (the request row names one anyway)
    usd_to_eur: float = 0.85
    discount: float = BATCH_DISCOUNT
    results_per_transaction: int = 500


@dataclass
class BatchReport:
    batches_created: int = 0
    requests_submitted: int = 0
    adopted: int = 0  # recovered batches found at OpenAI
    resubmitted: int = 0  # recovered batches OpenAI never got
    polled: int = 0
    poll_errors: int = 0  # HTTP errors while polling (the batch is left for the next poll)
    applied: int = 0
    failed: int = 0  # requests failed: invalid output, error-file line, given up
    released: int = 0  # requests back to PENDING_BATCHING
    batches_finished: int = 0

    @property
    def settled(self) -> int:
        return self.applied + self.failed


@dataclass
class _Plan:
    """One batch to be: its model, requests and JSONL lines (same order)."""

    model: str
    batch_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    request_ids: list[str] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    size: int = 0

    @property
    def content(self) -> bytes:
        return b"".join(self.lines)


@dataclass(frozen=True)
class _Rejected:
    request_id: str
    session_id: str
    reason: str
    skip: bool  # nothing to analyse: AI stages SKIPPED rather than FAILED


def batch_line(request_id: str, transcript: Transcript, model: str) -> bytes:
    """One JSONL line: custom_id = the request id, body = the chat-completions body for ``model``."""
    body = {**chat_body(transcript), "model": model}
    line = {"custom_id": request_id, "method": "POST", "url": ENDPOINT, "body": body}
    return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _chunks(items: list[str], size: int = _IDS) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _cut(text: str) -> str:
    return text[:MAX_ERROR_CHARS]


class BatchProcessor:
    """One run's worth of batch work for ``owner`` (the run's claim token); call the steps in order."""

    def __init__(
        self,
        engine: AsyncEngine,
        api: BatchAPI,
        *,
        owner: str,
        settings: BatchSettings,
        now: Callable[[], datetime],
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] = logger,
        should_continue: Callable[[], bool] = lambda: True,
    ) -> None:
        self.engine = engine
        self.api = api
        self.owner = owner
        self.settings = settings
        self.now = now
        self.log = log
        self.should_continue = should_continue
        self.report = BatchReport()

    # ------------------------------------------------------------------------------------------ create

    async def create(self) -> int:
        """Batch every claimable PENDING_BATCHING request; returns the number of batches submitted."""
        created = 0
        while self.should_continue():
            claimed = await self._claim_requests()
            if not claimed:
                break
            plans, rejected = await self._plan(claimed)
            plans = await self._link(plans, rejected)
            for plan in plans:
                await self._submit(plan.batch_id, plan.content, plan.model)
                created += 1
            if len(claimed) < self.settings.max_requests:
                break  # the backlog is empty
        return created

    async def _claim_requests(self) -> list[str]:
        claimed: list[str] = []
        pending = ai_processing_requests.c.processing_status == RequestStatus.PENDING_BATCHING.value
        while len(claimed) < self.settings.max_requests:
            limit = min(MAX_LIMIT, self.settings.max_requests - len(claimed))
            ids = await claim_batch(
                self.engine,
                REQUEST_CLAIM,
                owner=self.owner,
                limit=limit,
                lease_seconds=self.settings.claim_lease_seconds,
                where=pending & ai_processing_requests.c.batch_id.is_(None),
            )
            claimed.extend(str(i) for i in ids)
            if len(ids) < limit:
                break
        return claimed

    async def _plan(self, request_ids: list[str]) -> tuple[list[_Plan], list[_Rejected]]:
        """Build the lines and cut them into batches: one model each, within the count and byte caps."""
        async with self.engine.connect() as conn:
            rows = await self._request_rows(conn, ai_processing_requests.c.id, request_ids)
            transcripts = await load_transcripts(conn, [r[1] for r in rows], default_model=self.settings.default_model)
        plans: list[_Plan] = []
        rejected: list[_Rejected] = []
        current: dict[str, _Plan] = {}
        position = {request_id: index for index, request_id in enumerate(request_ids)}
        for request_id, session_id, model in sorted(rows, key=lambda r: (r[2], position[r[0]])):
            line, problem = self._line(request_id, session_id, model, transcripts)
            if problem is not None:
                rejected.append(problem)
                continue
            assert line is not None
            plan = current.get(model)
            full = plan is not None and (
                len(plan.request_ids) >= self.settings.max_requests or plan.size + len(line) > self.settings.max_bytes
            )
            if plan is None or full:
                plan = current[model] = _Plan(model)
                plans.append(plan)
            plan.request_ids.append(request_id)
            plan.lines.append(line)
            plan.size += len(line)
        return plans, rejected

    def _line(
        self, request_id: str, session_id: str, model: str, transcripts: Mapping[str, Transcript]
    ) -> tuple[bytes | None, _Rejected | None]:
        transcript = transcripts.get(session_id)
        if transcript is None or not transcript.lines:
            return None, _Rejected(request_id, session_id, "the session has no messages to analyse", skip=True)
        line = batch_line(request_id, transcript, model)
        if len(line) > self.settings.max_bytes:
            reason = f"the request is {len(line)} bytes, above the batch input cap of {self.settings.max_bytes}"
            return None, _Rejected(request_id, session_id, reason, skip=False)
        return line, None

    @staticmethod
    async def _request_rows(
        conn: AsyncConnection, column: Any, values: list[str], *where: Any
    ) -> list[tuple[str, str, str]]:
        rows: list[tuple[str, str, str]] = []
        for chunk in _chunks(values):
            result = await conn.execute(
                select(
                    ai_processing_requests.c.id, ai_processing_requests.c.session_id, ai_processing_requests.c.model
                ).where(column.in_(chunk), *where)
            )
            rows.extend((str(a), str(b), str(c)) for a, b, c in result)
        return rows

    async def _link(self, plans: list[_Plan], rejected: list[_Rejected]) -> list[_Plan]:
        """ONE transaction: the batch rows (PENDING, held by this run) and their requests' links; rejected
        requests fail. A request whose claim was lost meanwhile is left out of its batch's file."""
        now = self.now()
        lease = self.settings.claim_lease_seconds
        kept: list[_Plan] = []
        async with self.engine.begin() as conn:
            for plan in plans:
                await conn.execute(
                    insert(ai_batch_requests).values(
                        id=plan.batch_id,
                        model=plan.model,
                        status=BatchStatus.PENDING.value,
                        request_count=len(plan.request_ids),
                        input_bytes=plan.size,
                        created_at=now,
                        updated_at=now,
                        claimed_by=self.owner,
                        claimed_until=db_utc_now_plus(lease),
                    )
                )
                linked: set[str] = set()
                for chunk in _chunks(plan.request_ids):
                    await conn.execute(
                        update(ai_processing_requests)
                        .where(REQUEST_CLAIM.owned(self.owner, chunk, live=False))
                        .values(
                            processing_status=RequestStatus.BATCHING_IN_PROGRESS.value,
                            batch_id=plan.batch_id,
                            attempts=ai_processing_requests.c.attempts + 1,
                            claimed_by=None,
                            claimed_until=None,
                        )
                    )
                    result = await conn.execute(
                        select(ai_processing_requests.c.id).where(
                            ai_processing_requests.c.batch_id == plan.batch_id,
                            ai_processing_requests.c.id.in_(chunk),
                        )
                    )
                    linked.update(str(r[0]) for r in result)
                if len(linked) < len(plan.request_ids):
                    self.log.warning(
                        "batch %s: %d request(s) were claimed by another run meanwhile; left out",
                        plan.batch_id,
                        len(plan.request_ids) - len(linked),
                    )
                    pairs = [(r, x) for r, x in zip(plan.request_ids, plan.lines, strict=True) if r in linked]
                    plan.request_ids = [r for r, _ in pairs]
                    plan.lines = [x for _, x in pairs]
                    plan.size = sum(len(x) for x in plan.lines)
                    await conn.execute(
                        update(ai_batch_requests)
                        .where(ai_batch_requests.c.id == plan.batch_id)
                        .values(
                            request_count=len(plan.request_ids),
                            input_bytes=plan.size,
                            status=BatchStatus.PENDING.value if plan.lines else BatchStatus.FAILED.value,
                            error=None if plan.lines else "no requests left to submit",
                            claimed_by=self.owner if plan.lines else None,
                        )
                    )
                if plan.lines:
                    kept.append(plan)
            for item in rejected:
                result = await conn.execute(
                    update(ai_processing_requests)
                    .where(REQUEST_CLAIM.owned(self.owner, [item.request_id], live=False))
                    .values(
                        processing_status=RequestStatus.PROCESSING_FAILED.value,
                        error_message=_cut(item.reason),
                        completed_at=now,
                        claimed_by=None,
                        claimed_until=None,
                    )
                )
                if result.rowcount:
                    await self._fail_session(conn, item.session_id, item.reason, skip=item.skip, now=now)
                    self.report.failed += 1
        self.report.batches_created += len(kept)
        self.report.requests_submitted += sum(len(p.request_ids) for p in kept)
        return kept

    async def _fail_session(
        self, conn: AsyncConnection, session_id: str, reason: str, *, skip: bool, now: datetime
    ) -> None:
        if skip:
            await skip_analysis(conn, [session_id], reason, now=now)
        else:
            await fail_analysis(conn, session_id, reason, now=now)

    async def _submit(self, batch_id: str, content: bytes, model: str) -> None:
        """Upload and create the batch, then record it. The row is held by this run throughout.

        A transient failure leaves the row PENDING/UPLOADING for :meth:`recover` (the creation's outcome may
        be unknown: it is looked up by metadata before anything is resubmitted). A definite refusal (4xx)
        fails the batch and releases its requests. A failure of the bookkeeping write propagates after the
        row's claim is given back; :meth:`recover` adopts the remote batch after the grace period.
        """
        await self._set_batch(batch_id, status=BatchStatus.UPLOADING.value)
        try:
            file_id = await self.api.upload(f"batch-{batch_id}.jsonl", content)
            remote = await self.api.create(file_id, local_batch_id=batch_id)
        except BatchAPIError as exc:
            if exc.transient:
                self.log.warning("batch %s (%s) not submitted yet, retried later: %s", batch_id, model, exc)
                await self._set_batch(batch_id, error=_cut(str(exc)), claimed_by=None, claimed_until=None)
            else:
                self.log.error("batch %s (%s) refused by OpenAI: %s", batch_id, model, exc)
                await self._finish(batch_id, None, final=BatchStatus.FAILED, reason=f"submission refused: {exc}")
            return
        try:
            await self._record_submission(batch_id, remote)
        except Exception:
            self.log.exception(
                "batch %s was submitted as %s but could not be recorded; it is adopted by its metadata after %s",
                batch_id,
                remote.id,
                self.settings.submit_grace,
            )
            try:
                await release(self.engine, BATCH_CLAIM, [batch_id], owner=self.owner)
            except Exception as exc:  # the database is the problem; the lease runs out by itself
                self.log.warning("could not release batch %s: %s", batch_id, exc)
            raise
        self.log.info("batch %s submitted as %s: %s, %d bytes", batch_id, remote.id, model, len(content))

    async def _record_submission(self, batch_id: str, remote: RemoteBatch) -> None:
        status = STATUS_MAP.get(remote.status, BatchStatus.VALIDATING)
        if status in (BatchStatus.FAILED, BatchStatus.CANCELLED, BatchStatus.COMPLETED):
            status = BatchStatus.VALIDATING  # a final status is handled by the next poll, with its requests
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(ai_batch_requests)
                .where(BATCH_CLAIM.owned(self.owner, [batch_id], live=False))
                .values(
                    openai_batch_id=remote.id,
                    input_file_id=remote.input_file_id,
                    status=status.value,
                    error=None,
                    submitted_at=self.now(),
                    updated_at=self.now(),
                    claimed_by=None,
                    claimed_until=None,
                )
            )
        if not result.rowcount:
            self.log.error(
                "batch %s (%s) was taken over by another run before it could be recorded; that run adopts it",
                batch_id,
                remote.id,
            )

    async def _set_batch(self, batch_id: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(ai_batch_requests)
                .where(ai_batch_requests.c.id == batch_id)
                .values(updated_at=self.now(), **values)
            )

    # ------------------------------------------------------------------------------------------ recover

    async def recover(self) -> int:
        """Adopt or resubmit batches stuck PENDING/UPLOADING past the grace period; returns how many."""
        cutoff = self.now() - self.settings.submit_grace
        ids = [
            str(i)
            for i in await claim_batch(
                self.engine,
                BATCH_CLAIM,
                owner=self.owner,
                limit=_RECOVER_PER_RUN,
                lease_seconds=self.settings.claim_lease_seconds,
                where=ai_batch_requests.c.status.in_(SUBMITTING) & (ai_batch_requests.c.created_at < cutoff),
            )
        ]
        if not ids:
            return 0
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(ai_batch_requests.c.id, ai_batch_requests.c.model, ai_batch_requests.c.created_at).where(
                        ai_batch_requests.c.id.in_(ids)
                    )
                )
            ).all()
        since = int(min(r[2] for r in rows).timestamp()) - _LIST_SLACK_SECONDS
        try:
            remote = await self.api.find(set(ids), created_since=since)
        except BatchAPIError as exc:
            self.log.warning("cannot look for %d unrecorded batch(es) at OpenAI, retried later: %s", len(ids), exc)
            await release(self.engine, BATCH_CLAIM, ids, owner=self.owner)
            return 0
        for batch_id, model, _ in rows:
            found = remote.get(str(batch_id))
            if found is not None:
                self.log.warning("batch %s was submitted as %s but not recorded: adopted", batch_id, found.id)
                await self._record_submission(str(batch_id), found)
                self.report.adopted += 1
                continue
            content = await self._rebuild(str(batch_id), str(model))
            if content is None:
                continue
            self.log.warning("batch %s never reached OpenAI: submitting it now", batch_id)
            await self._submit(str(batch_id), content, str(model))
            self.report.resubmitted += 1
        return len(rows)

    async def _rebuild(self, batch_id: str, model: str) -> bytes | None:
        """The JSONL of a batch's linked requests; None (and the batch FAILED) when none is left."""
        async with self.engine.connect() as conn:
            rows = await self._request_rows(
                conn,
                ai_processing_requests.c.batch_id,
                [batch_id],
                ai_processing_requests.c.processing_status == RequestStatus.BATCHING_IN_PROGRESS.value,
            )
            transcripts = await load_transcripts(conn, [r[1] for r in rows], default_model=model)
        lines = []
        for request_id, session_id, _ in sorted(rows):
            line, problem = self._line(request_id, session_id, model, transcripts)
            if line is not None:
                lines.append(line)
            elif problem is not None:
                async with self.engine.begin() as conn:
                    await self._settle_request(conn, batch_id, request_id, problem.reason, now=self.now())
                    await self._fail_session(conn, session_id, problem.reason, skip=problem.skip, now=self.now())
        if not lines:
            await self._finish(batch_id, None, final=BatchStatus.FAILED, reason="no requests left to submit")
            return None
        return b"".join(lines)

    # ------------------------------------------------------------------------------------------ poll + results

    async def in_flight(self) -> int:
        """Batches at OpenAI whose results are not applied yet (what another poll can move on)."""
        async with self.engine.connect() as conn:
            count = await conn.scalar(
                select(func.count())
                .select_from(ai_batch_requests)
                .where(ai_batch_requests.c.status.in_(IN_FLIGHT), ai_batch_requests.c.openai_batch_id.is_not(None))
            )
        return int(count or 0)

    async def poll(self) -> int:
        """Poll every in-flight batch once and apply finished ones; returns how many were polled."""
        ids = await claim_batch(
            self.engine,
            BATCH_CLAIM,
            owner=self.owner,
            limit=_POLL_PER_RUN,
            lease_seconds=self.settings.claim_lease_seconds,
            where=ai_batch_requests.c.status.in_(IN_FLIGHT) & ai_batch_requests.c.openai_batch_id.is_not(None),
        )
        polled = 0
        try:
            for batch_id in ids:
                if not self.should_continue():
                    break
                await self._poll_one(str(batch_id))
                polled += 1
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_SECONDS):
                await release(self.engine, BATCH_CLAIM, ids, owner=self.owner)  # else the lease runs out
        self.report.polled += polled
        return polled

    async def _poll_one(self, batch_id: str) -> None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(ai_batch_requests.c.openai_batch_id, ai_batch_requests.c.status).where(
                        ai_batch_requests.c.id == batch_id
                    )
                )
            ).one()
        openai_id, status = str(row[0]), str(row[1])
        try:
            remote = await self.api.retrieve(openai_id)
        except BatchAPIError as exc:
            self.report.poll_errors += 1
            if exc.status == 404:
                self.log.error("batch %s (%s) is unknown to OpenAI: its requests are released", batch_id, openai_id)
                await self._finish(batch_id, None, final=BatchStatus.FAILED, reason=f"not found at OpenAI: {exc}")
            else:
                self.log.warning("batch %s (%s): status poll failed, retried next poll: %s", batch_id, openai_id, exc)
            return
        mapped = STATUS_MAP.get(remote.status)
        if mapped is None:
            level = logging.INFO if remote.status == "cancelling" else logging.WARNING
            self.log.log(level, "batch %s (%s) is %r: left for the next poll", batch_id, openai_id, remote.status)
            return
        if remote.status not in _FINAL_REMOTE:
            if mapped.value != status:
                await self._set_batch(batch_id, status=mapped.value)
            return
        if remote.status == "completed" and status != BatchStatus.COMPLETED.value:
            await self._set_batch(
                batch_id,
                status=BatchStatus.COMPLETED.value,
                output_file_id=remote.output_file_id,
                error_file_id=remote.error_file_id,
                completed_at=self.now(),
            )
        await self._results(batch_id, remote)

    async def _results(self, batch_id: str, remote: RemoteBatch) -> None:
        """Apply a finished batch's output and error files, release what is in neither, close the batch."""
        files: dict[str, list[tuple[int, Any]]] = {}
        for kind, file_id in (("output", remote.output_file_id), ("error", remote.error_file_id)):
            if not file_id:
                continue
            try:
                raw = await self.api.content(file_id)
            except BatchAPIError as exc:
                if exc.transient:
                    self.log.warning(
                        "batch %s: %s file %s not downloaded, retried next poll: %s", batch_id, kind, file_id, exc
                    )
                    return
                self.log.error(
                    "batch %s: %s file %s is unavailable (%s); its requests are retried", batch_id, kind, file_id, exc
                )
                continue
            files[kind] = self._read_lines(batch_id, kind, file_id, raw)
        pending = await self._pending(batch_id)
        now = self.now()
        items = [(kind, number, line) for kind in ("output", "error") for number, line in files.get(kind, [])]
        prices: dict[str, Price] = {}
        for start in range(0, len(items), self.settings.results_per_transaction):
            chunk = items[start : start + self.settings.results_per_transaction]
            async with self.engine.begin() as conn:
                analyses: dict[str, SessionAnalysis] = {}  # applied together: a few statements per chunk
                for kind, number, line in chunk:
                    request_id = str(line.get("custom_id"))
                    session_id = pending.get(request_id)
                    if session_id is None:
                        continue  # applied already, or not a request of this batch
                    if await self._apply_line(conn, batch_id, kind, number, line, session_id, prices, analyses, now):
                        pending.pop(request_id, None)
                await apply_analyses(conn, analyses, now=now)
        final, reason = {
            "completed": (BatchStatus.PROCESSED, "missing from the batch's output and error files"),
            "failed": (BatchStatus.FAILED, "batch failed: " + ("; ".join(remote.errors) or "no reason given")),
            "expired": (BatchStatus.FAILED, "batch expired before this request ran"),
            "cancelled": (BatchStatus.CANCELLED, "batch was cancelled"),
        }[remote.status]
        await self._finish(batch_id, remote, final=final, reason=reason)

    def _read_lines(self, batch_id: str, kind: str, file_id: str, raw: bytes) -> list[tuple[int, Any]]:
        lines: list[tuple[int, Any]] = []
        for number, text in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except ValueError as exc:
                self.log.error(
                    "batch %s: line %d of the %s file %s is not JSON (%s)", batch_id, number, kind, file_id, exc
                )
                continue
            if not isinstance(data, dict) or not isinstance(data.get("custom_id"), str):
                self.log.error("batch %s: line %d of the %s file %s has no custom_id", batch_id, number, kind, file_id)
                continue
            lines.append((number, data))
        return lines

    async def _pending(self, batch_id: str) -> dict[str, str]:
        """request id -> session id, for the batch's requests not settled yet."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(ai_processing_requests.c.id, ai_processing_requests.c.session_id).where(
                    _in_flight(batch_id),
                )
            )
            return {str(a): str(b) for a, b in rows}

    async def _apply_line(
        self,
        conn: AsyncConnection,
        batch_id: str,
        kind: str,
        number: int,
        line: Mapping[str, Any],
        session_id: str,
        prices: dict[str, Price],
        analyses: dict[str, SessionAnalysis],
        now: datetime,
    ) -> bool:
        """Settle one request from its result line; False when the line leaves it for retry (or it was
        settled already by another run)."""
        request_id = str(line["custom_id"])
        response = line.get("response") if isinstance(line.get("response"), dict) else {}
        assert isinstance(response, dict)
        body = response.get("body") if isinstance(response.get("body"), dict) else {}
        assert isinstance(body, dict)
        error = line.get("error") if isinstance(line.get("error"), dict) else None
        body_error = body.get("error") if isinstance(body.get("error"), dict) else None
        status_code = response.get("status_code")
        if kind == "error" or error or body_error or status_code != 200:
            problem = error or body_error or {}
            code = str(problem.get("code") or "")
            if code in _EXPIRED_LINE_CODES:
                return False  # the batch ran out, not the request: released with the batch
            message = problem.get("message") or f"HTTP {status_code}"
            reason = f"{kind} file line {number}: {code + ': ' if code else ''}{message}"
            done = await self._settle_request(conn, batch_id, request_id, reason, now=now)
            if done:
                await fail_analysis(conn, session_id, reason, now=now)
                self.report.failed += 1
            return done
        usage = Usage.from_openai(body.get("usage") if isinstance(body.get("usage"), dict) else None)
        model = str(body.get("model") or "unknown")
        if model not in prices:
            prices[model] = await price_for(conn, model, now)
        price = prices[model]
        usd, eur = cost_of(usage, price, usd_to_eur=self.settings.usd_to_eur, discount=self.settings.discount)
        content: Any = None
        with contextlib.suppress(KeyError, IndexError, TypeError):
            content = body["choices"][0]["message"]["content"]
        try:
            if not isinstance(content, str):
                raise InvalidAnalysis("content", "the answer has no message content")
            analysis = parse_analysis(content, session_id=session_id)
            failure = None
        except InvalidAnalysis as exc:
            analysis = None
            failure = f"output file line {number}: invalid analysis: {exc}"
        paid = 1.0 - self.settings.discount
        result = await conn.execute(
            update(ai_processing_requests)
            .where(
                ai_processing_requests.c.id == request_id,
                _in_flight(batch_id),
            )
            .values(
                processing_status=(
                    RequestStatus.PROCESSING_COMPLETE if analysis else RequestStatus.PROCESSING_FAILED
                ).value,
                model=model[:100],
                openai_request_id=_text(body.get("id"), 255),
                service_tier=_text(body.get("service_tier"), 50),
                system_fingerprint=_text(body.get("system_fingerprint"), 100),
                **usage.columns(),
                prompt_token_cost=price.prompt_usd_per_token * paid,
                completion_token_cost=price.completion_usd_per_token * paid,
                total_cost_usd=usd,
                total_cost_eur=eur,
                success=analysis is not None,
                error_message=_cut(failure) if failure else None,
                completed_at=now,
            )
        )
        if not result.rowcount:
            return False
        if analysis is not None:
            analyses[session_id] = analysis  # applied with the rest of the chunk, in this transaction
            self.report.applied += 1
        else:
            assert failure is not None
            await fail_analysis(conn, session_id, failure, now=now)
            self.report.failed += 1
        return True

    async def _settle_request(
        self, conn: AsyncConnection, batch_id: str, request_id: str, reason: str, *, now: datetime
    ) -> bool:
        result = await conn.execute(
            update(ai_processing_requests)
            .where(
                ai_processing_requests.c.id == request_id,
                _in_flight(batch_id),
            )
            .values(
                processing_status=RequestStatus.PROCESSING_FAILED.value,
                success=False,
                error_message=_cut(reason),
                completed_at=now,
            )
        )
        return bool(result.rowcount)

    async def _finish(self, batch_id: str, remote: RemoteBatch | None, *, final: BatchStatus, reason: str) -> None:
        """ONE transaction: the batch's unsettled requests go back to PENDING_BATCHING (or fail after
        ``max_attempts``), and the batch takes its final status."""
        now = self.now()
        released = failed = 0
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(
                        ai_processing_requests.c.id,
                        ai_processing_requests.c.session_id,
                        ai_processing_requests.c.attempts,
                    ).where(
                        _in_flight(batch_id),
                    )
                )
            ).all()
            retry = [str(r[0]) for r in rows if int(r[2]) < self.settings.max_attempts]
            for chunk in _chunks(retry):
                await conn.execute(
                    update(ai_processing_requests)
                    .where(ai_processing_requests.c.id.in_(chunk))
                    .values(
                        processing_status=RequestStatus.PENDING_BATCHING.value,
                        batch_id=None,
                        error_message=_cut(reason),
                        claimed_by=None,
                        claimed_until=None,
                    )
                )
            released = len(retry)
            for request_id, session_id, attempts in rows:
                if int(attempts) < self.settings.max_attempts:
                    continue
                why = f"gave up after {attempts} attempts: {reason}"
                if await self._settle_request(conn, batch_id, str(request_id), why, now=now):
                    await fail_analysis(conn, str(session_id), why, now=now)
                    failed += 1
            values: dict[str, Any] = {
                "status": final.value,
                "processed_at": now,
                "updated_at": now,
                "claimed_by": None,
                "claimed_until": None,
                "error": None if final is BatchStatus.PROCESSED else _cut(reason),
            }
            if remote is not None:
                values.update(
                    output_file_id=remote.output_file_id, error_file_id=remote.error_file_id, completed_at=now
                )
            await conn.execute(update(ai_batch_requests).where(ai_batch_requests.c.id == batch_id).values(**values))
        self.report.released += released
        self.report.failed += failed
        self.report.batches_finished += 1
        if released or failed:
            self.log.warning(
                "batch %s %s: %d request(s) back to pending, %d given up (%s)",
                batch_id,
                final.value,
                released,
                failed,
                reason,
            )
        else:
            self.log.info("batch %s %s", batch_id, final.value)


def _text(value: Any, limit: int) -> str | None:
    return str(value)[:limit] if value is not None else None


def _in_flight(batch_id: str) -> ColumnElement[bool]:
    """Requests travelling in this batch and not settled yet: the only rows its results may still write."""
    return and_(
        ai_processing_requests.c.batch_id == batch_id,
        ai_processing_requests.c.processing_status == RequestStatus.BATCHING_IN_PROGRESS.value,
    )
