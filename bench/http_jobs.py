"""The scheduler0 seed's test at scale: N ``@every 1m`` HTTP jobs, two replicas on PostgreSQL, counted hits.

    python -m bench.http_jobs [--jobs 100000] [--minutes 5] [--out bench/results]

1. A fresh PostgreSQL database (``tests.db.create_database``, dropped afterwards), migrated.
2. The /v1 API (``manager.jobs_api``) served by uvicorn on loopback in this process; a project and a key
   pair are made with the admin token, then ``--jobs`` jobs (``@every 1m``, America/New_York, data
   ``{"jobId": i}``, one loopback callback URL) are created through the API in batches of 1,000 with the key,
   as the seed's client does. The creation time is measured.
3. Two ``python -m runner`` processes, instances ``http-jobs`` and ``http-jobs-2`` (``type: http-jobs``),
   with the default dispatch settings and ``*_ALLOWED_TARGETS=127.0.0.1/32``. When both answer /readyz the
   window opens; after ``--minutes`` both get SIGTERM.
4. The receiver (a threaded HTTP server in this process) counts every element raw and by ``fire_id`` and
   notes when each fire first arrived. For every job, the expected fires are its anchor + k minutes inside
   the window (minus 2 s at the end for fires still in flight); reported: hits per job per whole minute of
   the window (a histogram: every entry should be 1), duplicates (raw minus distinct), missed fires
   (expected but never received), dispatch lag p50/p99 (first receipt minus fire time, and the
   dispatcher's own ``lag_ms`` from the execution log), and database load from ``pg_stat_database`` /
   ``pg_stat_user_tables`` over the window, per fire (no pg_stat_statements here: transactions, index
   scans and rows written are what the server exposes).

Writes bench/results/http_jobs.json and prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import uvicorn
from sqlalchemy import select, text
from starlette.applications import Starlette

from jobs.tables import executions, jobs
from manager import jobs_api
from storage.engine import create_engine
from storage.migrate import upgrade
from tests import db
from tests.jobs.callback_server import CallbackServer
from tests.support.processes import Proc, base_env, free_port

ADMIN = "bench-admin-token"
MINUTE = timedelta(minutes=1)


def _api_server(url: str) -> tuple[uvicorn.Server, str]:
    engine = create_engine(url)
    app = Starlette(routes=jobs_api.routes(engine, admin_token=ADMIN))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("API server did not start")
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def _create(base: str, callback: str, count: int) -> tuple[float, dict[str, str]]:
    admin = {"authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=base, timeout=120) as client:
        project = client.post("/v1/projects", json={"name": "bench"}, headers=admin).json()["data"]
        cred = client.post(f"/v1/projects/{project['id']}/credentials", headers=admin).json()["data"]
        key = {"x-api-key": cred["api_key"], "x-secret-key": cred["secret"]}
        started = time.perf_counter()
        for first in range(0, count, 1000):
            batch = [
                {
                    "spec": "@every 1m",
                    "timezone": "America/New_York",
                    "execution_type": "http",
                    "data": {"jobId": i},
                    "callback_url": callback,
                }
                for i in range(first, min(first + 1000, count))
            ]
            answer = client.post("/v1/jobs", json=batch, headers=key)
            if answer.status_code != 201:
                raise RuntimeError(f"creating jobs failed: {answer.status_code} {answer.text[:300]}")
        return time.perf_counter() - started, key


async def _pg_counters(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT xact_commit + xact_rollback, tup_inserted, tup_updated, tup_deleted, tup_fetched "
                        "FROM pg_stat_database WHERE datname = current_database()"
                    )
                )
            ).one()
            scans = (
                await conn.execute(
                    text("SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0) FROM pg_stat_user_tables")
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    keys = ("transactions", "rows_inserted", "rows_updated", "rows_deleted", "rows_fetched")
    return {**dict(zip(keys, (int(v) for v in row), strict=True)), "table_scans": int(scans)}


async def _db_facts(url: str, start: datetime, end: datetime) -> tuple[dict[str, datetime], list[float]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            anchors = {r.id: r.anchor_at for r in await conn.execute(select(jobs.c.id, jobs.c.anchor_at))}
            lags = sorted(
                (
                    await conn.execute(
                        select(executions.c.lag_ms).where(
                            executions.c.fire_time >= start, executions.c.fire_time <= end
                        )
                    )
                ).scalars()
            )
    finally:
        await engine.dispose()
    return anchors, [float(x) for x in lags]


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    admin_url = os.environ.get("BENCH_POSTGRES_URL", db.POSTGRES_ADMIN_URL)
    url = db.create_database(admin_url)
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-jobs-"))
    procs: list[Proc] = []
    stack = contextlib.ExitStack()
    try:
        asyncio.run(upgrade(url))
        receiver = stack.enter_context(CallbackServer())
        api, base = _api_server(url)
        created_in, _ = _create(base, receiver.url, args.jobs)
        print(f"created {args.jobs} jobs in {created_in:.1f} s ({args.jobs / created_in:.0f} jobs/s)", flush=True)
        (tmp / "config.yaml").write_text("services:\n  http-jobs-2:\n    type: http-jobs\n")
        env = base_env(
            DATABASE_URL=url,
            SCHEDULER_PLUGINS="services.http_jobs",
            LOG_LEVEL="WARNING",
            SCHEDULER_CONFIG_FILE=str(tmp / "config.yaml"),
            HTTP_JOBS_ALLOWED_TARGETS="127.0.0.1/32",
            HTTP_JOBS_2_ALLOWED_TARGETS="127.0.0.1/32",
        )
        for name, node in (("http-jobs", "replica-a"), ("http-jobs-2", "replica-b")):
            procs.append(
                Proc(["runner", f"--scheduler={name}"], {**env, "SCHEDULER_INSTANCE_ID": node}, free_port(), tmp, name)
            )
        for proc in procs:
            proc.wait_ready(60)
        window_start = datetime.now(UTC)
        before = asyncio.run(_pg_counters(url))
        time.sleep(args.minutes * 60)
        window_end = datetime.now(UTC)
        after = asyncio.run(_pg_counters(url))
        for proc in procs:
            proc.popen.terminate()
        codes = [proc.wait_exit(60) for proc in procs]
        api.should_exit = True

        last = window_end - timedelta(seconds=2)
        anchors, db_lags = asyncio.run(_db_facts(url, window_start, last))
        with receiver.lock:
            raw, first_seen = Counter(receiver.raw), dict(receiver.first_seen)
        minutes = int((last - window_start) / MINUTE)
        per_minute: Counter[int] = Counter()
        expected = missed = 0
        lags: list[float] = []
        for job_id, anchor in anchors.items():
            k = max(1, -(-(window_start - anchor) // MINUTE))
            counts = [0] * minutes
            while (fire := anchor + k * MINUTE) <= last:
                expected += 1
                fire_id = f"{job_id}@{fire.isoformat().replace('+00:00', 'Z')}"
                if fire_id in raw:
                    lags.append((first_seen[fire_id] - fire.timestamp()) * 1000)
                    slot = int((fire - window_start) / MINUTE)
                    if slot < minutes:
                        counts[slot] += 1
                else:
                    missed += 1
                k += 1
            per_minute.update(counts)
        lags.sort()
        duplicates = sum(n - 1 for n in raw.values())
        fires = len([1 for n in raw.values() if n])
        delta = {k: after[k] - before[k] for k in before}
        in_window = max(1, expected - missed)
        result = {
            "when": datetime.now(UTC).isoformat(),
            "jobs": args.jobs,
            "minutes": args.minutes,
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "creation_seconds": round(created_in, 2),
            "creation_jobs_per_second": round(args.jobs / created_in),
            "hits_per_job_per_minute": {str(k): v for k, v in sorted(per_minute.items())},
            "expected_fires": expected,
            "missed_fires": missed,
            "duplicates": duplicates,
            "distinct_fires": fires,
            "lag_receipt_ms": {
                "p50": round(_pct(lags, 0.5), 1),
                "p99": round(_pct(lags, 0.99), 1),
                "max": round(lags[-1], 1) if lags else None,
                "mean": round(statistics.fmean(lags), 1) if lags else None,
            },
            "lag_dispatcher_ms": {"p50": round(_pct(db_lags, 0.5), 1), "p99": round(_pct(db_lags, 0.99), 1)},
            "db_per_fire": {k: round(v / in_window, 3) for k, v in delta.items()},
            "exit_codes": codes,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "http_jobs.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0 if missed == 0 and duplicates == 0 else 1
    finally:
        stack.close()
        for proc in procs:
            proc.close()
        db.drop_database(admin_url, url)


if __name__ == "__main__":
    sys.exit(main())
