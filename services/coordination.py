"""Coordination across processes through the database: leases with fencing tokens, node heartbeats, takeover.

One `Coordinator` per process. A service that wins the claim of a fire time acquires its lease: one row per
service naming the holder, a fencing token that grows on every acquisition, and an expiry computed by the
database clock. The coordinator renews every lease this node holds once per heartbeat (one statement for
all of them). A lease that cannot be renewed in time, or that another node has taken, is *lost*: the run
under it is cancelled, and its late writes are rejected because they carry an old token.

When a node dies, its lease expires; the next heartbeat of any node serving that service sees it and
calls the service's takeover handler, which marks the run abandoned and retries it (see
`BaseSchedulerService._take_over`). The service's next fire may take the expired lease first (it is free
to anyone once expired): the dead run is then closed by the orphan sweep (or its node's restart), and the
heartbeat finds it as an `UnretriedAttempt` whose retry the same handler claims. Idle cost per heartbeat:
six short statements (clock, node row, expired leases, orphan sweep, unretried attempts, service states).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import anyio
from anyio.abc import TaskStatus
from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.batching import TurnBatcher
from services.clock import SystemClock
from services.runs import _RELEASE, _SKIP, RunStore, ServiceState, insert_claims
from storage.dbclock import db_utc_now, db_utc_now_plus
from storage.engine import writer
from storage.inserts import insert_ignoring_conflicts
from storage.schema import leases, nodes, runs

log = logging.getLogger("services.coordination")
# A clock sample is only as good as half its round trip: a late answer (database unreachable or
# overloaded) would throw the scheduling clock off, so such samples are dropped.
_MAX_ALIGN_ROUND_TRIP = timedelta(milliseconds=200)  # a slower sample would bias the estimate late by that much


@dataclass
class Lease:
    """This node's right to run one service, until `deadline` (event-loop time) unless renewed."""

    scheduler: str
    token: int
    run_id: str | None
    deadline: float
    lost: anyio.Event = field(default_factory=anyio.Event)
    lost_reason: str | None = None

    def mark_lost(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()

    async def wait_lost(self) -> str:
        """Return (with the reason) once the lease is lost or its local deadline passes unrenewed."""
        while not self.lost.is_set():
            with anyio.move_on_at(self.deadline):
                await self.lost.wait()
            if anyio.current_time() >= self.deadline:
                self.mark_lost("the lease could not be renewed within its TTL (database unreachable?)")
        return self.lost_reason or "lease lost"


@dataclass(frozen=True)
class Busy:
    """The lease is held by another live run."""

    holder: str | None
    run_id: str | None

    @property
    def reason(self) -> str:
        """Why a fire time claimed under this busy lease did not run (its run row's error)."""
        where = f" on {self.holder}" if self.holder else ""
        return f"previous run {self.run_id}{where} still in progress"


@dataclass(frozen=True)
class ExpiredLease:
    """A lease whose holder stopped renewing it: the run under it is presumed dead."""

    scheduler: str
    holder: str | None
    run_id: str | None
    token: int


@dataclass(frozen=True)
class UnretriedAttempt:
    """An attempt closed as abandoned, failed or timed out that no lease covers and no later attempt follows.

    Its retry (if the service's retries allow one) was owed by a node that is gone: the attempt's node
    died after closing it, or died holding it while the service's next fire took the expired lease before
    any heartbeat took it over (the orphan sweep or the node's restart then closed it as abandoned).
    """

    scheduler: str
    run_id: str
    attempt: int
    status: str


TakeoverHandler = Callable[[ExpiredLease | UnretriedAttempt], None]
# Closed attempts younger than this many lock TTLs are checked for an owed retry; older history never is
# (a fresh install of this check must not retry months-old failures).
_UNRETRIED_HORIZON_TTLS = 4
_RETRYABLE_STATUSES = ("abandoned", "failed", "timed_out")
StateHandler = Callable[[ServiceState], None]


async def _lock_in_order(conn: AsyncConnection, schedulers: list[str]) -> None:
    """Lock these lease rows in one global order before a multi-row update.

    Replicas update overlapping sets of lease rows (acquisitions, renewals); a multi-row UPDATE locks rows in
    whatever order it meets them, so two of them can deadlock (measured: 156 deadlocks in 60 s with three
    replicas on PostgreSQL). Locking by scheduler name first makes every transaction queue in the same order.
    SQLite has no row locks (writers are serialised), so nothing to do there.
    """
    if conn.dialect.name != "sqlite" and schedulers:
        await conn.execute(
            select(leases.c.scheduler)
            .where(leases.c.scheduler.in_(sorted(schedulers)))
            .order_by(leases.c.scheduler)
            .with_for_update()
        )


class DatabaseAlignedClock(SystemClock):
    """The node's wall clock corrected by its measured offset from the database clock.

    Every node schedules by (an estimate of) the same clock, so a node whose own clock runs ahead does not
    fire early. `offset` is the injected skew (tests); `correction` is what the coordinator measures.
    """

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        super().__init__(offset)
        self.correction = timedelta(0)

    def now(self) -> datetime:
        return super().now() + self.correction


class Coordinator:
    def __init__(
        self,
        engine: AsyncEngine,
        node_id: str,
        *,
        lock_ttl: float = 60.0,
        heartbeat_interval: float = 15.0,
        clock: DatabaseAlignedClock | None = None,
        version: str = "",
    ) -> None:
        if heartbeat_interval > lock_ttl / 3:
            raise ValueError(
                f"heartbeat interval {heartbeat_interval:g}s must be at most a third of the lock TTL {lock_ttl:g}s"
            )
        self.engine = engine
        self._writes = writer(engine)
        self._states = RunStore(engine, node_id)  # reads the services' state rows each heartbeat
        self.node_id = node_id
        self.lock_ttl = lock_ttl
        self.heartbeat_interval = heartbeat_interval
        self.clock = clock or DatabaseAlignedClock()
        self.version = version
        self.held: dict[str, Lease] = {}
        self.healthy = False  # the last heartbeat reached the database
        self._takeover: dict[str, TakeoverHandler] = {}
        self._state: dict[str, StateHandler] = {}
        self._acquisitions: TurnBatcher[tuple[str, str], Lease | Busy] = TurnBatcher(self._acquire_requests)
        self._fires: TurnBatcher[dict[str, Any], tuple[str | None, Lease | Busy | None]] = TurnBatcher(
            self._claim_requests
        )

    # ------------------------------------------------------------------ wiring

    def on_expired(self, scheduler: str, handler: TakeoverHandler) -> None:
        """Call `handler` when a lease of `scheduler` held by another node is found expired, or an attempt of
        `scheduler` is found closed without the retry it may be owed (`UnretriedAttempt`)."""
        self._takeover[scheduler] = handler

    def on_state(self, scheduler: str, handler: StateHandler) -> None:
        """Call `handler` with the service's stored state on every heartbeat (pause/config made elsewhere)."""
        self._state[scheduler] = handler

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Register the node, align the clock, then heartbeat until cancelled; marks the node stopped."""
        try:
            await self._register()
            await self.prepare(list(self._takeover))
            await self.beat()
        except Exception as exc:
            log.error("coordination: first heartbeat failed: %s", exc)
        task_status.started()
        try:
            while True:
                await anyio.sleep(self.heartbeat_interval)
                await self.beat()
        finally:
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + 5
                await self._unregister()

    # ------------------------------------------------------------------ leases

    def _lease_seconds(self) -> float:
        # Assume the lease lost a little before the database would: our clock started before its statement.
        return self.lock_ttl - min(1.0, self.lock_ttl * 0.05)

    async def acquire(self, scheduler: str, run_id: str | None) -> Lease | Busy:
        """Take the service's lease if it is free or expired; the token grows by one on every acquisition.

        Acquisitions requested in the same event-loop turn (services whose fires fell due together) share
        one statement in the common case, like claims do; see `_acquire_many`.
        """
        if run_id is None:
            return await self._acquire_one(scheduler, run_id)
        return await self._acquisitions.submit((scheduler, run_id))

    async def _acquire_requests(self, requests: Sequence[tuple[str, str]]) -> list[Lease | Busy]:
        results = await self._acquire_many(dict(requests))
        return [results[scheduler] for scheduler, _ in requests]

    async def _acquire_many(self, wanted: dict[str, str]) -> dict[str, Lease | Busy]:
        """Acquire several services' leases in one transaction (see `_take_leases`)."""
        started = anyio.current_time()
        async with self._writes.begin() as conn:
            taken = await self._take_leases(conn, wanted)
        return self._results(wanted, taken, started)

    def _results(self, wanted: dict[str, str], taken: dict[str, int | Busy], started: float) -> dict[str, Lease | Busy]:
        """Hold the leases taken (their local deadline counts from `started`, before the statement)."""
        results: dict[str, Lease | Busy] = {}
        for name, got in taken.items():
            if isinstance(got, Busy):
                results[name] = got
            else:
                results[name] = self._hold(Lease(name, got, wanted[name], started + self._lease_seconds()))
        return results

    async def _take_leases(self, conn: AsyncConnection, wanted: dict[str, str]) -> dict[str, int | Busy]:
        """Take every free or expired lease among `wanted` (service -> run id): its new token, or Busy.

        One conditional update takes them (atomic per row under its row lock, so two nodes cannot both
        succeed) and returns the new tokens; only the leases not taken are read, to tell a busy one from one
        that has no row yet (those are inserted, first insert wins; `prepare` creates the rows up front so
        the hot path does not insert).
        """
        names = sorted(wanted)
        got: dict[str, int] = {}
        busy: dict[str, Busy] = {}
        await _lock_in_order(conn, names)
        returning = conn.dialect.name in ("postgresql", "sqlite")
        take = (
            update(leases)
            .where(leases.c.scheduler.in_(names),
                   or_(leases.c.holder.is_(None), leases.c.expires_at < db_utc_now()))
            .values(holder=self.node_id, fencing_token=leases.c.fencing_token + 1,
                    run_id=case(wanted, value=leases.c.scheduler), acquired_at=db_utc_now(),
                    expires_at=db_utc_now_plus(self.lock_ttl))
        )
        if returning:
            got = {r.scheduler: int(r.fencing_token)
                   for r in await conn.execute(take.returning(leases.c.scheduler, leases.c.fencing_token))}
        else:
            await conn.execute(take)
        rest = [name for name in names if name not in got]
        if rest:
            rows = {r.scheduler: r for r in await conn.execute(
                select(leases.c.scheduler, leases.c.holder, leases.c.fencing_token, leases.c.run_id)
                .where(leases.c.scheduler.in_(rest)))}
            for name in rest:
                row = rows.get(name)
                if row is None:
                    continue
                if row.holder == self.node_id and row.run_id == wanted[name]:
                    got[name] = int(row.fencing_token)  # taken by the update above (no RETURNING)
                else:
                    busy[name] = Busy(row.holder, row.run_id)
            missing = [name for name in rest if name not in rows]
            if missing:
                await conn.execute(
                    insert_ignoring_conflicts(conn, leases).values(
                        [{"scheduler": name, "holder": self.node_id, "fencing_token": 1,
                          "run_id": wanted[name]} for name in missing]
                    )
                )
                # Times by the database clock; only rows this insert created still lack them.
                await conn.execute(
                    update(leases)
                    .where(leases.c.scheduler.in_(missing), leases.c.holder == self.node_id,
                           leases.c.acquired_at.is_(None))
                    .values(acquired_at=db_utc_now(), expires_at=db_utc_now_plus(self.lock_ttl))
                )
                for r in await conn.execute(
                    select(leases.c.scheduler, leases.c.holder, leases.c.fencing_token, leases.c.run_id)
                    .where(leases.c.scheduler.in_(missing))
                ):
                    if r.holder == self.node_id and r.run_id == wanted[r.scheduler]:
                        got[r.scheduler] = int(r.fencing_token)
                    else:
                        busy[r.scheduler] = Busy(r.holder, r.run_id)
        return {name: got[name] if name in got else busy.get(name, Busy(None, None)) for name in names}

    async def claim(self, row: dict[str, Any]) -> tuple[str | None, Lease | Busy | None]:
        """Claim a fire time (insert its run row, `RunStore.claim_row`) and take the service's lease, together.

        Returns (run id, lease) when both landed; (None, None) when another node claimed the fire time; and
        (None, Busy) when the claim landed but another run of the service still holds the lease: that row is
        closed as skipped in the same transaction. Fires claimed in the same event-loop turn share ONE
        transaction (insert, lock, lease update, commit), so a run starts after a single trip to the database,
        and a failure leaves neither a claim without its lease nor a lease without its run.
        """
        return await self._fires.submit(row)

    async def _claim_requests(self, rows: Sequence[dict[str, Any]]) -> list[tuple[str | None, Lease | Busy | None]]:
        results: dict[str, tuple[str | None, Lease | Busy | None]] = {}
        pending = list(rows)
        while pending:  # one row per service and transaction (a service claims one fire at a time anyway)
            batch: dict[str, dict[str, Any]] = {}
            later: list[dict[str, Any]] = []
            for row in pending:
                if row["scheduler"] in batch:
                    later.append(row)
                else:
                    batch[row["scheduler"]] = row
            results.update(await self._claim_and_take(list(batch.values())))
            pending = later
        return [results[row["id"]] for row in rows]

    async def _claim_and_take(self, rows: list[dict[str, Any]]) -> dict[str, tuple[str | None, Lease | Busy | None]]:
        started = anyio.current_time()
        async with self._writes.begin() as conn:
            won = await insert_claims(conn, rows)
            wanted = {row["scheduler"]: row["id"] for row in rows if row["id"] in won}
            claimed_at = {row["scheduler"]: row["started_at"] for row in rows}
            taken = await self._take_leases(conn, wanted) if wanted else {}
            for name, got in sorted(taken.items()):
                if isinstance(got, Busy):
                    await conn.execute(_SKIP, {"p_run_id": wanted[name], "p_at": claimed_at[name],
                                               "p_error": got.reason})
        held = self._results(wanted, taken, started)
        results: dict[str, tuple[str | None, Lease | Busy | None]] = {}
        for row in rows:
            lease = held.get(row["scheduler"]) if row["id"] in won else None
            results[row["id"]] = (row["id"] if isinstance(lease, Lease) else None, lease)
        return results

    async def _acquire_one(self, scheduler: str, run_id: str | None) -> Lease | Busy:
        """Single acquisition (takeover of an expired lease)."""
        started = anyio.current_time()
        async with self._writes.begin() as conn:
            row = (
                await conn.execute(
                    select(leases.c.holder, leases.c.fencing_token, leases.c.run_id).where(
                        leases.c.scheduler == scheduler
                    )
                )
            ).first()
            if row is None:
                inserted = await conn.execute(
                    insert_ignoring_conflicts(conn, leases).values(
                        scheduler=scheduler, holder=self.node_id, fencing_token=1, run_id=run_id,
                        acquired_at=db_utc_now(), expires_at=db_utc_now_plus(self.lock_ttl),
                    )
                )
                if inserted.rowcount:
                    return self._hold(Lease(scheduler, 1, run_id, started + self._lease_seconds()))
                return Busy(None, None)  # another node created it this instant
            token = int(row.fencing_token)
            taken = await conn.execute(
                update(leases)
                .where(
                    leases.c.scheduler == scheduler,
                    leases.c.fencing_token == token,
                    or_(leases.c.holder.is_(None), leases.c.expires_at < db_utc_now()),
                )
                .values(holder=self.node_id, fencing_token=token + 1, run_id=run_id,
                        acquired_at=db_utc_now(), expires_at=db_utc_now_plus(self.lock_ttl))
            )
        if taken.rowcount:
            return self._hold(Lease(scheduler, token + 1, run_id, started + self._lease_seconds()))
        return Busy(row.holder, row.run_id)

    async def prepare(self, schedulers: list[str]) -> None:
        """Create the services' lease rows (free, token 0) if missing, so acquisitions only update.

        Inserting a missing lease row on the hot path takes gap locks on MariaDB, which deadlock with the
        ordered row locks of concurrent acquisitions (measured: hundreds of deadlocks in a few seconds).
        """
        if not schedulers:
            return
        async with self._writes.begin() as conn:
            await conn.execute(
                insert_ignoring_conflicts(conn, leases),
                [{"scheduler": name, "holder": None, "fencing_token": 0, "run_id": None}
                 for name in sorted(schedulers)],
            )

    def _hold(self, lease: Lease) -> Lease:
        self.held[lease.scheduler] = lease
        return lease

    async def set_run(self, lease: Lease, run_id: str) -> None:
        """Point the lease at the run now executing under it (a retry attempt), so takeover finds it."""
        lease.run_id = run_id
        async with self._writes.begin() as conn:
            await conn.execute(
                update(leases)
                .where(leases.c.scheduler == lease.scheduler, leases.c.fencing_token == lease.token)
                .values(run_id=run_id)
            )

    async def release(self, lease: Lease) -> None:
        """Give the lease back (only if still ours: the token must match)."""
        self.forget(lease)
        async with self._writes.begin() as conn:
            await conn.execute(
                _RELEASE, {"p_scheduler": lease.scheduler, "p_token": lease.token, "p_holder": self.node_id}
            )

    def forget(self, lease: Lease) -> None:
        """Stop renewing a lease that was released elsewhere (with the run's outcome, in one transaction)."""
        if self.held.get(lease.scheduler) is lease:
            del self.held[lease.scheduler]

    # ------------------------------------------------------------------ heartbeat

    async def beat(self) -> None:
        """Measure the clock offset, refresh the node row, renew held leases, look for expired ones.

        Bounded by the lock TTL: in a network partition statements can hang until the kernel gives up on the
        connection (many minutes); a heartbeat that cannot finish in time has failed, and the runs whose
        leases it could not renew cancel themselves at their local deadline.
        """
        try:
            with anyio.fail_after(self.lock_ttl):
                await self._beat()
        except Exception as exc:
            if self.healthy:
                log.warning("coordination: heartbeat failed: %s", exc or type(exc).__name__)
            self.healthy = False

    async def _beat(self) -> None:
        await self._align_clock()
        async with self._writes.begin() as conn:
            await conn.execute(
                update(nodes).where(nodes.c.node_id == self.node_id).values(heartbeat_at=db_utc_now())
            )
        await self._renew()
        expired = await self._find_expired()
        await self._sweep_orphans()
        unretried = await self._find_unretried()
        states = await self._states.load_states(list(self._state))
        if not self.healthy:
            log.info("coordination: database reachable; node %s heartbeating", self.node_id)
        self.healthy = True
        for name, state in states.items():
            self._state[name](state)
        found_all: list[ExpiredLease | UnretriedAttempt] = [*expired, *unretried]
        for found in found_all:
            handler = self._takeover.get(found.scheduler)
            if handler is not None:
                handler(found)

    async def _align_clock(self) -> None:
        sent = self.clock.now() - self.clock.correction
        async with self.engine.connect() as conn:
            db_now: datetime = (await conn.execute(select(db_utc_now()))).scalar_one()
        received = self.clock.now() - self.clock.correction
        if received - sent > _MAX_ALIGN_ROUND_TRIP:
            return
        # The database read its clock somewhere between `sent` and `received`. Taking `received` as that
        # moment can only put this node's estimate behind the database (by at most the round trip), never
        # ahead: a node may fire a little late, never early. (The midpoint is closer on average but fires
        # early whenever the request leg was the slow one, e.g. on a busy event loop.)
        correction = db_now - received
        # Ignore jitter below 5 ms; a real skew (seconds) is corrected at once.
        if abs((correction - self.clock.correction).total_seconds()) > 0.005:
            if abs(correction.total_seconds()) > 1:
                log.warning("this node's clock is %.3fs off the database clock; scheduling by the database",
                            -correction.total_seconds())
            self.clock.correction = correction

    async def _renew(self) -> None:
        if not self.held:
            return
        started = anyio.current_time()
        held = dict(self.held)
        async with self._writes.begin() as conn:
            await _lock_in_order(conn, list(held))
            renewed = await conn.execute(
                update(leases)
                .where(leases.c.holder == self.node_id, leases.c.scheduler.in_(list(held)))
                .values(expires_at=db_utc_now_plus(self.lock_ttl))
            )
            if renewed.rowcount == len(held):
                still_ours = {name: lease.token for name, lease in held.items()}
            else:
                rows = await conn.execute(
                    select(leases.c.scheduler, leases.c.fencing_token).where(leases.c.holder == self.node_id)
                )
                still_ours = {r.scheduler: int(r.fencing_token) for r in rows}
        for name, lease in held.items():
            if still_ours.get(name) == lease.token:
                lease.deadline = started + self._lease_seconds()
            else:
                lease.mark_lost("another node took over the lease")
                self.held.pop(name, None)

    async def _find_expired(self) -> list[ExpiredLease]:
        watched = [name for name in self._takeover if name not in self.held]
        if not watched:
            return []
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(leases.c.scheduler, leases.c.holder, leases.c.run_id, leases.c.fencing_token).where(
                    leases.c.scheduler.in_(watched),
                    and_(leases.c.holder.is_not(None), leases.c.expires_at < db_utc_now()),
                )
            )
            return [ExpiredLease(r.scheduler, r.holder, r.run_id, int(r.fencing_token)) for r in rows]

    async def _sweep_orphans(self) -> None:
        """Abandon `running` rows no lease covers, older than a TTL: a claim whose lease was never taken
        (the database failed in between) or whose lease was released without an outcome."""
        watched = list(self._takeover)
        if not watched:
            return
        covered = (
            select(leases.c.run_id)
            .where(leases.c.holder.is_not(None), leases.c.run_id.is_not(None))
            .scalar_subquery()
        )
        async with self._writes.begin() as conn:
            result = await conn.execute(
                update(runs)
                .where(
                    runs.c.status == "running",
                    runs.c.scheduler.in_(watched),
                    runs.c.started_at < db_utc_now_plus(-self.lock_ttl),
                    runs.c.id.not_in(covered),
                )
                .values(status="abandoned", finished_at=db_utc_now(),
                        error="no node held a lease for this run (its node died or lost the database)")
            )
        if result.rowcount:
            log.warning("coordination: marked %d orphaned run(s) abandoned", result.rowcount)

    async def _find_unretried(self) -> list[UnretriedAttempt]:
        """Recently closed retryable attempts with no later attempt and no lease on them (see UnretriedAttempt).

        A live node waiting out a retry's back-off still holds the lease naming the failed attempt, so its
        retry is never taken from it; an expired lease is the takeover's (`_find_expired`). Services whose
        lease this node holds are busy here and are skipped.
        """
        watched = [name for name in self._takeover if name not in self.held]
        if not watched:
            return []
        later = runs.alias("later")
        covered = (
            select(leases.c.run_id)
            .where(leases.c.holder.is_not(None), leases.c.run_id.is_not(None))
            .scalar_subquery()
        )
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(runs.c.scheduler, runs.c.id, runs.c.attempt, runs.c.status).where(
                    runs.c.status.in_(_RETRYABLE_STATUSES),
                    runs.c.scheduler.in_(watched),
                    runs.c.finished_at > db_utc_now_plus(-self.lock_ttl * _UNRETRIED_HORIZON_TTLS),
                    runs.c.id.not_in(covered),
                    ~select(later.c.id).where(
                        later.c.scheduler == runs.c.scheduler,
                        later.c.scheduled_for == runs.c.scheduled_for,
                        later.c.attempt == runs.c.attempt + 1,
                    ).exists(),
                )
            )
            return [UnretriedAttempt(r.scheduler, r.id, int(r.attempt), r.status) for r in rows]

    # ------------------------------------------------------------------ node registry

    async def _register(self) -> None:
        values: dict[str, Any] = {
            "hostname": socket.gethostname(), "pid": os.getpid(), "version": self.version,
            "services": sorted(self._takeover), "started_at": db_utc_now(), "heartbeat_at": db_utc_now(),
            "stopped_at": None,
        }
        async with self._writes.begin() as conn:
            result = await conn.execute(update(nodes).where(nodes.c.node_id == self.node_id).values(**values))
            if not result.rowcount:
                await conn.execute(insert_ignoring_conflicts(conn, nodes).values(node_id=self.node_id, **values))

    async def _unregister(self) -> None:
        try:
            async with self._writes.begin() as conn:
                await conn.execute(
                    update(nodes).where(nodes.c.node_id == self.node_id).values(stopped_at=db_utc_now())
                )
        except Exception as exc:
            log.warning("coordination: could not mark node %s stopped: %s", self.node_id, exc)
