"""The dispatcher: claim due jobs, POST each callback URL's fires as one JSON array, record, advance.

One batch (``dispatch_once``):

1. **claim** up to ``batch_size`` (<= 1,000) jobs with ``next_fire_at <= database now`` through
   :func:`storage.claims.claim_batch` (SKIP LOCKED; a lease on the database clock). The fire being
   delivered is each job's ``next_fire_at``.
2. **deliver**: group by (callback URL, timeout, retries), split groups into requests of at most
   ``max_request_bytes``, POST them with bounded concurrency, retries and backoff
   (:mod:`jobs.delivery`). The lease is renewed while deliveries take long.
3. **record**, in one transaction fenced by the claim: lock the jobs this owner still holds, insert one
   ``http_job_executions`` row per fire (unique ``(job_id, fire_time)``, conflicts ignored), move
   ``next_fire_at`` to the first fire after the delivered one (unless the job was paused or rescheduled
   meanwhile) and release the claim.

The guarantee, precisely: every fire is **delivered at least once and recorded exactly once**. The POST
happens before the record, so a replica killed (or stalled past its lease) between the two leaves the job
due with the same fire time; once the lease expires another replica delivers that fire again and records
it. Each element of the array carries ``fire_id`` = ``<job id>@<fire time ISO>``, identical on every
redelivery: receivers that must act once deduplicate by it. Duplicates only arise from a crash or lease
overrun between POST and record; in normal operation each fire is POSTed exactly once.

Catch-up: fires missed while no replica ran are delivered one per batch, oldest first, unless older than
``misfire_grace``: then the job jumps to its first fire inside the grace window (the skipped fires are
not delivered).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
from sqlalchemy import DateTime, String, and_, bindparam, case, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import TextClause

from jobs.delivery import DeliveryResult, deliver
from jobs.model import NextFire
from jobs.tables import executions, jobs
from jobs.targets import TargetPolicy, TargetRefused
from storage.claims import ClaimSpec, claim_batch, renew
from storage.dbclock import db_utc_now, db_utc_now_plus
from storage.inserts import insert_ignoring_conflicts

log = logging.getLogger(__name__)

CLAIMS = ClaimSpec(jobs, jobs.c.id, jobs.c.claimed_by, jobs.c.claimed_until, order_by=(jobs.c.next_fire_at, jobs.c.id))


@dataclass(frozen=True)
class DispatchSettings:
    batch_size: int = 1000
    lease_seconds: float = 60.0
    max_concurrency: int = 20
    max_request_bytes: int = 2 * 1024 * 1024
    backoff: float = 2.0
    misfire_grace: timedelta = timedelta(minutes=10)


@dataclass
class DueFire:
    job_id: str
    project_id: str
    spec: str
    timezone: str
    anchor_at: datetime
    fire_time: datetime
    callback_url: str
    data: Any
    timeout_ms: int
    retry_max: int
    retry_delay_ms: int

    @property
    def fire_id(self) -> str:
        return f"{self.job_id}@{iso(self.fire_time)}"

    def element(self) -> dict[str, Any]:
        return {
            "id": self.job_id,
            "fire_id": self.fire_id,
            "fire_time": iso(self.fire_time),
            "project_id": self.project_id,
            "data": self.data,
        }


@dataclass
class Outcome:
    result: DeliveryResult
    lag_ms: float


@dataclass
class BatchReport:
    claimed: int = 0
    recorded: int = 0
    failed: int = 0
    requests: int = 0
    lost: int = 0  # claims taken over by another replica before this one recorded them
    lags_ms: list[float] = field(default_factory=list)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def dns_resolve(host: str) -> list[str]:
    infos = await anyio.getaddrinfo(host, None)
    return sorted({str(info[4][0]) for info in infos})


class Dispatcher:
    """Delivers due fires for one owner token at a time; any number of dispatchers share the jobs table."""

    def __init__(
        self,
        engine: AsyncEngine,
        client: httpx.AsyncClient,
        *,
        node: str,
        next_fire: NextFire,
        policy: TargetPolicy,
        now: Callable[[], datetime],
        settings: DispatchSettings | None = None,
        resolve: Callable[[str], Awaitable[list[str]]] = dns_resolve,
    ) -> None:
        self.engine = engine
        self.client = client
        self.node = node
        self.next_fire = next_fire
        self.policy = policy
        self.now = now
        self.settings = settings or DispatchSettings()
        self.resolve = resolve
        self._limiter = anyio.CapacityLimiter(self.settings.max_concurrency)

    async def drain(self, owner: str, keep_going: Callable[[], bool]) -> BatchReport:
        """Dispatch batches until nothing is due (or ``keep_going()`` turns false); totals of all batches."""
        total = BatchReport()
        while keep_going():
            report = await self.dispatch_once(owner)
            total.claimed += report.claimed
            total.recorded += report.recorded
            total.failed += report.failed
            total.requests += report.requests
            total.lost += report.lost
            total.lags_ms.extend(report.lags_ms)
            if report.claimed == 0:  # also after a short batch: catch-up fires may be due again at once
                break
        return total

    async def dispatch_once(self, owner: str) -> BatchReport:
        report = BatchReport()
        lease = self.settings.lease_seconds
        ids = await claim_batch(
            self.engine,
            CLAIMS,
            owner=owner,
            limit=self.settings.batch_size,
            lease_seconds=lease,
            where=and_(jobs.c.next_fire_at <= db_utc_now(), jobs.c.enabled.is_(True)),
        )
        report.claimed = len(ids)
        if not ids:
            return report
        fires = await self._load(ids, owner)
        outcomes: dict[str, Outcome] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._keep_lease, ids, owner, tg.cancel_scope)
            async with anyio.create_task_group() as sends:
                for url, chunk in self._requests(fires):
                    report.requests += 1
                    sends.start_soon(self._send, url, chunk, outcomes)
            tg.cancel_scope.cancel()
        recorded, lost = await self._record(fires, outcomes, owner)
        report.recorded, report.lost = recorded, lost
        report.failed = sum(1 for o in outcomes.values() if not o.result.ok)
        report.lags_ms = [o.lag_ms for o in outcomes.values()]
        return report

    # ------------------------------------------------------------------ steps

    async def _load(self, ids: list[Any], owner: str) -> list[DueFire]:
        c = jobs.c
        stmt = select(
            c.id,
            c.project_id,
            c.spec,
            c.timezone,
            c.anchor_at,
            c.next_fire_at,
            c.callback_url,
            c.data,
            c.timeout_ms,
            c.retry_max,
            c.retry_delay_ms,
        ).where(CLAIMS.owned(owner, ids, live=False))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [DueFire(*row) for row in rows]

    def _requests(self, fires: list[DueFire]) -> list[tuple[str, list[DueFire]]]:
        """Group by (URL, delivery settings) and split each group into requests under the byte cap."""
        groups: dict[tuple[str, int, int, int], list[DueFire]] = {}
        for fire in fires:
            key = (fire.callback_url, fire.timeout_ms, fire.retry_max, fire.retry_delay_ms)
            groups.setdefault(key, []).append(fire)
        out: list[tuple[str, list[DueFire]]] = []
        cap = self.settings.max_request_bytes
        for (url, *_), group in groups.items():
            chunk: list[DueFire] = []
            size = 2
            for fire in group:
                length = len(json.dumps(fire.element())) + 1
                if chunk and size + length > cap:
                    out.append((url, chunk))
                    chunk, size = [], 2
                chunk.append(fire)
                size += length
            out.append((url, chunk))
        return out

    async def _send(self, url: str, chunk: list[DueFire], outcomes: dict[str, Outcome]) -> None:
        first = chunk[0]
        async with self._limiter:
            started = self.now()
            try:
                await self.policy.check_resolved(url, self.resolve)
            except (TargetRefused, OSError) as exc:
                result = DeliveryResult(False, None, 0.0, 1, f"refused: {exc}")
            else:
                body = json.dumps([f.element() for f in chunk]).encode()
                result = await deliver(
                    self.client,
                    url,
                    body,
                    request_timeout=first.timeout_ms / 1000,
                    retry_max=first.retry_max,
                    retry_delay=first.retry_delay_ms / 1000,
                    backoff=self.settings.backoff,
                    headers={"x-fire-count": str(len(chunk))},
                )
        for fire in chunk:
            lag = (started - fire.fire_time).total_seconds() * 1000
            outcomes[fire.job_id] = Outcome(result, round(lag, 3))

    async def _keep_lease(self, ids: list[Any], owner: str, scope: anyio.CancelScope) -> None:
        """Renew the claim every third of the lease while deliveries (with their retries) go on."""
        lease = self.settings.lease_seconds
        while True:
            await anyio.sleep(lease / 3)
            try:
                held = await renew(self.engine, CLAIMS, ids, owner=owner, lease_seconds=lease)
            except Exception:  # a failed renewal only risks a redelivery, which fire ids make harmless
                log.warning("could not renew the claim on %d job(s)", len(ids), exc_info=True)
                continue
            if held < len(ids):
                log.warning("%d of %d claimed job(s) were taken over by another replica", len(ids) - held, len(ids))

    async def _record(self, fires: list[DueFire], outcomes: dict[str, Outcome], owner: str) -> tuple[int, int]:
        """Fenced by the claim: log each fire once, advance next_fire_at, release. Returns (recorded, lost)."""
        ids = [f.job_id for f in fires]
        now = self.now()
        lease = self.settings.lease_seconds
        async with self.engine.begin() as conn:
            # Lock the rows still held (a takeover overwrote claimed_by on the others), so no claim can take
            # them until this transaction ends. SQLite has no row locks: a write takes its database lock.
            still_held = select(jobs.c.id).where(CLAIMS.owned(owner, ids, live=False))
            if conn.dialect.name == "sqlite":
                await conn.execute(
                    update(jobs)
                    .where(CLAIMS.owned(owner, ids, live=False))
                    .values(claimed_until=db_utc_now_plus(lease))
                )
            else:
                still_held = still_held.with_for_update()
            held = set((await conn.execute(still_held)).scalars())
            mine = [f for f in fires if f.job_id in held and f.job_id in outcomes]
            if not mine:
                return 0, len(fires)
            created = datetime.now(UTC)
            log_rows = []
            advances = []
            for fire in mine:
                outcome = outcomes[fire.job_id]
                r = outcome.result
                log_rows.append(
                    {
                        "job_id": fire.job_id,
                        "project_id": fire.project_id,
                        "fire_time": fire.fire_time,
                        "status": "succeeded" if r.ok else "failed",
                        "status_code": r.status_code,
                        "latency_ms": r.latency_ms,
                        "lag_ms": outcome.lag_ms,
                        "attempt": r.attempts,
                        "error": r.error,
                        "node": self.node,
                        "created_at": created,
                    }
                )
                advances.append({"b_id": fire.job_id, "b_fire": fire.fire_time, "b_next": self._next(fire, now)})
            await conn.execute(insert_ignoring_conflicts(conn, executions), log_rows)
            await _advance(conn, owner, advances)
        return len(mine), len(fires) - len(mine)

    def _next(self, fire: DueFire, now: datetime) -> datetime | None:
        try:
            following = self.next_fire(fire.spec, fire.timezone, fire.fire_time, fire.anchor_at)
            oldest = now - self.settings.misfire_grace
            if following < oldest:
                following = self.next_fire(fire.spec, fire.timezone, oldest, fire.anchor_at)
        except ValueError:
            log.error("job %s has an unusable schedule %r (%s); it stops firing", fire.job_id, fire.spec, fire.timezone)
            return None
        return following


@functools.cache
def _advance_pg() -> TextClause:
    """Built on first use: the PostgreSQL dialect package is large (RSS) and most processes never need it."""
    from sqlalchemy.dialects.postgresql import ARRAY

    return text(
        """
        UPDATE http_jobs AS j
           SET next_fire_at = CASE WHEN j.enabled AND j.next_fire_at = v.fire THEN v.next ELSE j.next_fire_at END,
               claimed_by = NULL,
               claimed_until = NULL
          FROM unnest(:ids, :fires, :nexts) AS v(id, fire, next)
         WHERE j.id = v.id AND j.claimed_by = :owner
        """
    ).bindparams(
        bindparam("ids", type_=ARRAY(String())),
        bindparam("fires", type_=ARRAY(DateTime())),
        bindparam("nexts", type_=ARRAY(DateTime())),
    )


async def _advance(conn: AsyncConnection, owner: str, advances: list[dict[str, Any]]) -> None:
    """Move each job to its next fire and release it; a job paused or rescheduled meanwhile keeps what the
    API set (its next_fire_at no longer equals the fire delivered). PostgreSQL: one statement for the whole
    batch (arrays, unnest); other engines: one executemany."""
    if conn.dialect.name == "postgresql":

        def naive(moment: datetime | None) -> datetime | None:
            return moment.astimezone(UTC).replace(tzinfo=None) if moment is not None else None

        await conn.execute(
            _advance_pg(),
            {
                "owner": owner,
                "ids": [a["b_id"] for a in advances],
                "fires": [naive(a["b_fire"]) for a in advances],
                "nexts": [naive(a["b_next"]) for a in advances],
            },
        )
        return
    await conn.execute(
        update(jobs)
        .where(jobs.c.id == bindparam("b_id"), jobs.c.claimed_by == owner)
        .values(
            next_fire_at=case(
                (
                    and_(jobs.c.enabled.is_(True), jobs.c.next_fire_at == bindparam("b_fire")),
                    bindparam("b_next", type_=jobs.c.next_fire_at.type),
                ),
                else_=jobs.c.next_fire_at,
            ),
            claimed_by=None,
            claimed_until=None,
        ),
        advances,
    )
