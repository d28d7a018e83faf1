"""What one fire costs the database, and where its lag goes: one process, N services `@every 1s`.

    python -m bench.firecost [--engine sqlite|postgresql|mysql] [--seconds 10] [--services 100]
                             [--heartbeat 1] [--ttl 5]

A development probe, not a figure for the report (bench.core and bench.replicas are): it runs the
`lag-probe` services under the real manager and coordinator in this process and counts, with SQLAlchemy
events, every statement and transaction, split into those made *before* a run starts (the claim and the lease,
the path that decides lag), after it (outcome, release) and by the heartbeat. Per fire it prints statements,
transactions and round trips (statements plus BEGIN/COMMIT where the driver sends them), how many fires
shared one pre-start transaction, and the lag split into wake-up (scheduled time to the claim) and hand-over
(claim to the start of `run_once`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import event, select

from bench.core import audit, summarize, write_config
from bench.services import LagProbe
from manager import app
from manager.config import load_config
from services.base import BaseSchedulerService
from storage.migrate import upgrade
from storage.schema import runs

ADMIN_URLS = {"postgresql": "postgresql://postgres@127.0.0.1:5432/test", "mysql": "mysql://root@127.0.0.1:3306/test"}
# Round trips a transaction adds to its statements: BEGIN and COMMIT (asyncpg; aiosqlite hops to its thread
# for both), COMMIT only (aiomysql starts transactions implicitly).
_TX_TRIPS = {"postgresql": 2, "sqlite": 2, "mysql": 1, "mariadb": 1}


class Phases:
    """Which phase each asyncio task is in, so statements can be attributed without touching the code."""

    def __init__(self) -> None:
        self.by_task: dict[int, str] = {}
        self.statements: Counter[str] = Counter()
        self.transactions: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.wake: list[float] = []  # scheduled time -> the claim begins
        self.claim: list[float] = []  # claim + lease, until _claim_new returns
        self.durations: dict[str, list[float]] = {}
        self.connects = 0  # new database connections opened in the window (pool overflow churn)
        self.loop: list[float] = []  # how late a 1 ms sleep wakes: the event loop's congestion
        self.batches: list[tuple[int, float]] = []  # (fires, seconds) of each claim-and-lease transaction

    def current(self) -> str:
        try:
            task = asyncio.current_task()
        except RuntimeError:
            return "other"
        return self.by_task.get(id(task), "heartbeat") if task else "other"

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        task = asyncio.current_task()
        key = id(task)
        before = self.by_task.get(key)
        self.by_task[key] = name
        try:
            yield
        finally:
            if before is None:
                self.by_task.pop(key, None)
            else:
                self.by_task[key] = before


def instrument(phases: Phases) -> None:
    """Wrap the run path's phases (class-level, for this process only)."""
    claim_new = BaseSchedulerService._claim_new
    finish = BaseSchedulerService._finish
    execute = BaseSchedulerService._execute

    async def _claim_new(self: BaseSchedulerService, scheduled_for: Any, *args: Any, **kwargs: Any) -> Any:
        entered = self.clock.now()
        with phases.phase("pre-start"):
            try:
                return await claim_new(self, scheduled_for, *args, **kwargs)
            finally:
                phases.wake.append((entered - scheduled_for).total_seconds())
                phases.claim.append((self.clock.now() - entered).total_seconds())

    async def _finish(self: BaseSchedulerService, *args: Any, **kwargs: Any) -> Any:
        with phases.phase("post-run"):
            return await finish(self, *args, **kwargs)

    async def _execute(self: BaseSchedulerService, *args: Any, **kwargs: Any) -> Any:
        with phases.phase("post-run"):
            return await execute(self, *args, **kwargs)

    for name, wrapper in (("_claim_new", _claim_new), ("_finish", _finish), ("_execute", _execute)):
        if hasattr(BaseSchedulerService, name):
            setattr(BaseSchedulerService, name, wrapper)
    from services.coordination import Coordinator

    take = getattr(Coordinator, "_claim_and_take", None)
    if take is not None:
        async def _claim_and_take(self: Coordinator, rows: Any) -> Any:
            t0 = anyio.current_time()
            try:
                return await take(self, rows)
            finally:
                phases.batches.append((len(rows), anyio.current_time() - t0))

        Coordinator._claim_and_take = _claim_and_take  # type: ignore[method-assign]


def count(engine: Any, phases: Phases) -> None:
    """Count statements, commits and new connections, and time every statement, by phase."""

    def on_statement(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("BEGIN"):
            return
        where = phases.current()
        phases.statements[where] += 1
        phases.kinds[f"{where}: {' '.join(statement.split()[:3])[:40]}"] += 1

    def on_start(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        conn.info["t0"] = time.perf_counter()

    def on_done(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("BEGIN"):
            return
        kind = f"{phases.current()}: {' '.join(statement.split()[:3])[:40]}"
        phases.durations.setdefault(kind, []).append(time.perf_counter() - conn.info.pop("t0", time.perf_counter()))

    event.listen(engine.sync_engine, "before_cursor_execute", on_start)
    event.listen(engine.sync_engine, "after_cursor_execute", on_done)

    def on_connect(*_: Any) -> None:
        phases.connects += 1

    event.listen(engine.sync_engine, "connect", on_connect)

    def on_commit(conn: Any) -> None:
        phases.transactions[phases.current()] += 1

    event.listen(engine.sync_engine, "before_cursor_execute", on_statement)
    event.listen(engine.sync_engine, "commit", on_commit)


async def measure(url: str, directory: Path, services: int, seconds: float) -> dict[str, Any]:
    await upgrade(url)
    os.environ.update({"DATABASE_URL": url, "SCHEDULER_PLUGINS": "bench.services"})
    platform_ = app.build(load_config(write_config(directory, services, "@every 1s")))
    phases = Phases()
    instrument(phases)
    LagProbe.samples.clear()
    async with anyio.create_task_group() as tg:
        await tg.start(platform_.coordinator.run)
        await tg.start(platform_.manager.run)
        await anyio.sleep(2)  # start-up writes are not the steady state
        count(platform_.engine, phases)
        first = len(LagProbe.samples)

        async def monitor() -> None:
            while True:
                t0 = anyio.current_time()
                await anyio.sleep(0.001)
                phases.loop.append(anyio.current_time() - t0 - 0.001)

        tg.start_soon(monitor)
        phases.wake.clear()
        phases.claim.clear()
        phases.batches.clear()
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        await anyio.sleep(seconds)
        fires = len(LagProbe.samples) - first
        used = resource.getrusage(resource.RUSAGE_SELF)
        cpu_seconds = used.ru_utime - cpu.ru_utime + used.ru_stime - cpu.ru_stime
        counted = (dict(phases.statements), dict(phases.transactions), dict(phases.kinds))
        platform_.manager.request_shutdown()
        await platform_.manager.stopped.wait()
        tg.cancel_scope.cancel()
    async with platform_.engine.connect() as conn:
        rows = (await conn.execute(select(runs.c.scheduler, runs.c.scheduled_for, runs.c.status))).all()
    dialect = platform_.engine.dialect.name
    await platform_.engine.dispose()
    statements, transactions, kinds = counted
    trips = {k: statements.get(k, 0) + _TX_TRIPS.get(dialect, 1) * transactions.get(k, 0)
             for k in set(statements) | set(transactions)}
    per_fire = {
        k: {"statements": round(statements.get(k, 0) / fires, 3),
            "transactions": round(transactions.get(k, 0) / fires, 3), "round_trips": round(trips[k] / fires, 3)}
        for k in sorted(trips)
    }
    lags = [lag for _, lag in LagProbe.samples[first:]]
    return {
        "engine": dialect, "services": services, "seconds": seconds, "fires": fires,
        "per_fire": per_fire,
        "cpu_ms_per_fire": round(cpu_seconds * 1000 / fires, 3),  # this process (user + system), all phases
        "statement_kinds_per_fire": {k: round(v / fires, 3) for k, v in sorted(kinds.items())},
        "lag": summarize(lags) if lags else {},
        "lag_wake_to_claim": summarize(phases.wake) if phases.wake else {},
        "lag_claim_and_lease": summarize(phases.claim) if phases.claim else {},
        "statement_ms_p50_p99": {k: (round(summarize(v)["p50_ms"], 2), round(summarize(v)["p99_ms"], 2))
                                 for k, v in sorted(phases.durations.items())},
        "connections_opened": phases.connects,
        "loop_overshoot_of_1ms_sleep": summarize(phases.loop) if phases.loop else {},
        "claim_transactions": {
            "count": len(phases.batches),
            "fires_per_transaction": round(sum(n for n, _ in phases.batches) / max(1, len(phases.batches)), 2),
            "duration": summarize([d for _, d in phases.batches]) if phases.batches else {},
        },
        "audit": audit(rows, timedelta(seconds=1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", default="sqlite", choices=("sqlite", "postgresql", "mysql"))
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--heartbeat", default="1")
    parser.add_argument("--ttl", default="5")
    args = parser.parse_args()
    os.environ.update({"SCHEDULER_HEARTBEAT_INTERVAL": args.heartbeat, "SCHEDULER_LOCK_TTL": args.ttl,
                       "LOG_LEVEL": "WARNING"})
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        if args.engine == "sqlite":
            result = anyio.run(measure, f"sqlite:///{directory / 'firecost.db'}", directory, args.services,
                               args.seconds)
        else:
            from tests.db import create_database, drop_database

            url = create_database(ADMIN_URLS[args.engine])
            try:
                result = anyio.run(measure, url, directory, args.services, args.seconds)
            finally:
                drop_database(ADMIN_URLS[args.engine], url)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
