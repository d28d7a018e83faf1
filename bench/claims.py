"""Work-item claims: storage.claims.claim_batch versus a hand-written SQL loop, three replica processes each.

    python -m bench.claims [--items 10000] [--batch 100] [--replicas 3] [--rounds 5]
                           [--engines postgresql,mysql,sqlite] [--out bench/results]

For every engine a fresh database is created (and dropped afterwards). Each round loads ``--items`` due
items, starts ``--replicas`` worker processes (``python -m bench.claims --worker ...``), lets them connect,
then releases them together; they drain the backlog in batches of ``--batch``: claim a batch, then mark
each item done with a fenced UPDATE (executemany, one transaction per batch), until a claim comes back
empty. ``helper`` workers use claim_batch and ``ClaimSpec.owned`` through SQLAlchemy; ``raw`` workers send
the same claims as hand-written SQL straight through the driver (asyncpg, aiomysql, aiosqlite). Modes
alternate between rounds; figures are medians over rounds. Throughput is items / (last replica done -
first replica released). The audit counts duplicates (an item claimed by two replicas, or done twice) and
missing items (never claimed, or never done); both must be 0.

Targets (from the issue): PostgreSQL >= 3,000 items/s through claim_batch, and claim_batch at least half
as fast as the raw loop there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.claims import ClaimSpec, claim_batch, db_utc_now
from storage.engine import create_engine
from storage.errors import explain
from storage.types import UTCDateTime
from tests.db import create_database, drop_database

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URLS = {
    "postgresql": os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    "mysql": os.environ.get("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/mysql"),
}
ENGINES = ("postgresql", "mysql", "sqlite")
MODES = ("helper", "raw")
LEASE_SECONDS = 120.0  # longer than any run: a lease never expires mid-bench, so every duplicate is a bug
TABLE = "bench_claim_items"

md = MetaData()
items = Table(
    TABLE,
    md,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", UTCDateTime(), nullable=True),
    Column("done_at", UTCDateTime(), nullable=True),
    Column("done_count", Integer, nullable=False),
    Index("ix_bench_claim_items_pending", "done_at", "id"),  # pending items in id order
)
SPEC = ClaimSpec(items, items.c.id, items.c.claimed_by, items.c.claimed_until, order_by=(items.c.id,))
PENDING = items.c.done_at.is_(None)


# ------------------------------------------------------------------------------------------------ workers


async def helper_worker(url: str, owner: str, batch: int) -> dict[str, Any]:
    """claim_batch + a fenced executemany UPDATE per batch, through SQLAlchemy, on one held connection."""
    engine = create_engine(url, pool_size=1)
    done = (
        update(items)
        .where(SPEC.owned(owner), items.c.id == bindparam("item_id"))
        .values(done_at=db_utc_now(), done_count=items.c.done_count + 1)
    )
    claimed: list[int] = []
    batches = 0
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            await conn.rollback()
            start = await _ready_then_go()
            while ids := await claim_batch(conn, SPEC, owner=owner, limit=batch, lease_seconds=LEASE_SECONDS,
                                           where=PENDING):
                batches += 1
                claimed.extend(ids)
                async with conn.begin():
                    await conn.execute(done, [{"item_id": i} for i in ids])
            end = time.monotonic()
    finally:
        await engine.dispose()
    return {"owner": owner, "claimed": claimed, "batches": batches, "start": start, "end": end}


_PG_NOW = "timezone('UTC', statement_timestamp())"
PG_CLAIM = (
    f"SELECT id FROM {TABLE} WHERE done_at IS NULL AND (claimed_by IS NULL OR claimed_until < {_PG_NOW}) "
    "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
)
PG_TAKE = (
    f"UPDATE {TABLE} SET claimed_by = $1, claimed_until = {_PG_NOW} + make_interval(secs => $2) "
    "WHERE id = ANY($3::bigint[])"
)
PG_DONE = (
    f"UPDATE {TABLE} SET done_at = {_PG_NOW}, done_count = done_count + 1 "
    f"WHERE id = $1 AND claimed_by = $2 AND claimed_until > {_PG_NOW}"
)
MY_CLAIM = (
    f"SELECT id FROM {TABLE} WHERE done_at IS NULL AND (claimed_by IS NULL OR claimed_until < UTC_TIMESTAMP(6)) "
    "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
)
MY_TAKE = (
    f"UPDATE {TABLE} SET claimed_by = %s, claimed_until = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND "
    "WHERE id IN ({ids})"
)
MY_DONE = (
    f"UPDATE {TABLE} SET done_at = UTC_TIMESTAMP(6), done_count = done_count + 1 "
    "WHERE id = %s AND claimed_by = %s AND claimed_until > UTC_TIMESTAMP(6)"
)
_LITE_NOW = "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')"
LITE_CLAIM = (
    f"UPDATE {TABLE} SET claimed_by = ?, "
    "claimed_until = strftime('%Y-%m-%d %H:%M:%f', 'now', printf('%.6f seconds', ?)) || '000' "
    f"WHERE id IN (SELECT id FROM {TABLE} WHERE done_at IS NULL AND (claimed_by IS NULL OR claimed_until < "
    f"{_LITE_NOW}) ORDER BY id LIMIT ?) RETURNING id"
)
LITE_DONE = (
    f"UPDATE {TABLE} SET done_at = {_LITE_NOW}, done_count = done_count + 1 "
    f"WHERE id = ? AND claimed_by = ? AND claimed_until > {_LITE_NOW}"
)


async def raw_worker(url: str, owner: str, batch: int) -> dict[str, Any]:
    """The same claims and fenced updates as hand-written SQL straight through the async driver."""
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        return await _raw_postgres(url, owner, batch)
    if backend == "mysql":
        return await _raw_mysql(url, owner, batch)
    return await _raw_sqlite(url, owner, batch)


async def _raw_postgres(url: str, owner: str, batch: int) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(make_url(url).render_as_string(hide_password=False))
    claimed: list[int] = []
    batches = 0
    try:
        await conn.execute("SELECT 1")
        start = await _ready_then_go()
        while True:
            async with conn.transaction():
                ids = [r[0] for r in await conn.fetch(PG_CLAIM, batch)]
                if ids:
                    await conn.execute(PG_TAKE, owner, LEASE_SECONDS, ids)
            if not ids:
                break
            batches += 1
            claimed.extend(ids)
            async with conn.transaction():
                await conn.executemany(PG_DONE, [(i, owner) for i in ids])
        end = time.monotonic()
    finally:
        await conn.close()
    return {"owner": owner, "claimed": claimed, "batches": batches, "start": start, "end": end}


async def _raw_mysql(url: str, owner: str, batch: int) -> dict[str, Any]:
    import aiomysql

    parsed = make_url(url)
    conn = await aiomysql.connect(host=parsed.host, port=parsed.port or 3306, user=parsed.username,
                                  password=parsed.password or "", db=parsed.database, autocommit=False,
                                  charset="utf8mb4")
    lease_us = round(LEASE_SECONDS * 1_000_000)
    claimed: list[int] = []
    batches = 0
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT 1")
            await conn.commit()
            start = await _ready_then_go()
            while True:
                await cur.execute(MY_CLAIM, (batch,))
                ids = [int(r[0]) for r in await cur.fetchall()]
                if ids:
                    await cur.execute(MY_TAKE.format(ids=", ".join(["%s"] * len(ids))), (owner, lease_us, *ids))
                await conn.commit()
                if not ids:
                    break
                batches += 1
                claimed.extend(ids)
                await cur.executemany(MY_DONE, [(i, owner) for i in ids])
                await conn.commit()
            end = time.monotonic()
    finally:
        conn.close()
    return {"owner": owner, "claimed": claimed, "batches": batches, "start": start, "end": end}


async def _raw_sqlite(url: str, owner: str, batch: int) -> dict[str, Any]:
    import aiosqlite

    db = await aiosqlite.connect(make_url(url).database or "", isolation_level=None)
    claimed: list[int] = []
    batches = 0
    try:
        for pragma in ("journal_mode=WAL", "busy_timeout=5000", "foreign_keys=ON", "synchronous=NORMAL"):
            await db.execute(f"PRAGMA {pragma}")
        start = await _ready_then_go()
        while True:
            await db.execute("BEGIN")
            cursor = await db.execute(LITE_CLAIM, (owner, LEASE_SECONDS, batch))
            ids = sorted(int(r[0]) for r in await cursor.fetchall())
            await db.execute("COMMIT")
            if not ids:
                break
            batches += 1
            claimed.extend(ids)
            await db.execute("BEGIN")
            await db.executemany(LITE_DONE, [(i, owner) for i in ids])
            await db.execute("COMMIT")
        end = time.monotonic()
    finally:
        await db.close()
    return {"owner": owner, "claimed": claimed, "batches": batches, "start": start, "end": end}


async def _ready_then_go() -> float:
    """Connected: tell the parent, wait for its go, and return the start time (system-wide monotonic)."""
    print("ready", flush=True)
    line = await anyio.to_thread.run_sync(sys.stdin.readline)
    if line.strip() != "go":
        raise SystemExit(f"worker expected 'go', got {line!r}")
    return time.monotonic()


def worker_main(mode: str, url: str, owner: str, batch: int) -> None:
    fn = helper_worker if mode == "helper" else raw_worker
    result = anyio.run(fn, url, owner, batch)
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------ parent


@contextlib.contextmanager
def fresh_database(engine: str, directory: Path) -> Iterator[str]:
    """A new empty database's plain URL, dropped afterwards (SQLite: a new file)."""
    if engine == "sqlite":
        yield f"sqlite:///{directory / f'claims-{uuid.uuid4().hex[:8]}.db'}"
        return
    admin = ADMIN_URLS[engine]
    url = create_database(admin)
    try:
        yield url
    finally:
        drop_database(admin, url)


async def load(url: str, count: int) -> str:
    """(Re)create the items table with ``count`` due items; return the server version."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(md.drop_all)
            await conn.run_sync(md.create_all)
            for first in range(1, count + 1, 5000):
                rows = [{"id": i, "done_count": 0} for i in range(first, min(count, first + 4999) + 1)]
                await conn.execute(items.insert(), rows)
        async with engine.connect() as conn:
            await _analyze(conn)
            version = ".".join(str(p) for p in conn.dialect.server_version_info or ())
        return version
    finally:
        await engine.dispose()


async def _analyze(conn: AsyncConnection) -> None:
    name = conn.dialect.name
    if name == "postgresql":
        await conn.exec_driver_sql(f"ANALYZE {TABLE}")
    elif name == "mysql":
        await conn.exec_driver_sql(f"ANALYZE TABLE {TABLE}")
    else:
        await conn.exec_driver_sql("ANALYZE")
    await conn.commit()


async def audit_rows(url: str) -> dict[int, int]:
    """done_count of every item."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(items.c.id, items.c.done_count))).all()
        return {int(i): int(n) for i, n in rows}
    finally:
        await engine.dispose()


def drain(url: str, mode: str, replicas: int, batch: int) -> list[dict[str, Any]]:
    """Start the worker processes, release them together, collect what each claimed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.claims", "--worker", mode, "--url", url, "--owner", f"{mode}-{i}",
             "--batch", str(batch)],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for i in range(replicas)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"{mode} worker did not start (exit {proc.wait()}): {line!r}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if proc.wait(120) != 0 or not line:
                raise RuntimeError(f"{mode} worker failed with exit code {proc.returncode}")
            results.append(json.loads(line))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def one_round(url: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    anyio.run(load, url, args.items)
    results = drain(url, mode, args.replicas, args.batch)
    done = anyio.run(audit_rows, url)
    claims = Counter(i for r in results for i in r["claimed"])
    duplicates = {i for i, n in claims.items() if n > 1} | {i for i, n in done.items() if n > 1}
    missing = {i for i in done if i not in claims} | {i for i, n in done.items() if n == 0}
    seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {
        "seconds": round(seconds, 4),
        "items_per_s": round(args.items / seconds, 1),
        "per_replica": sorted(len(r["claimed"]) for r in results),
        "batches": sum(r["batches"] for r in results),
        "duplicates": len(duplicates),
        "missing": len(missing),
    }


def bench_engine(engine: str, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with fresh_database(engine, directory) as url:
        version = anyio.run(load, url, 1)
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else tuple(reversed(MODES)):
                rounds[mode].append(one_round(url, mode, args))
    report: dict[str, Any] = {"server_version": version}
    for mode, runs in rounds.items():
        report[mode] = {
            "items_per_s": round(statistics.median(run["items_per_s"] for run in runs), 1),
            "duplicates": sum(run["duplicates"] for run in runs),
            "missing": sum(run["missing"] for run in runs),
            "rounds": runs,
        }
    report["ratio"] = round(report["helper"]["items_per_s"] / report["raw"]["items_per_s"], 3)
    return report


def machine() -> dict[str, Any]:
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    return {"cores": os.cpu_count(), "memory": mem.split(":")[1].strip(), "python": platform.python_version(),
            "platform": platform.platform()}


def print_table(engines: dict[str, Any]) -> None:
    header = (
        f"{'engine':<11} {'server':<9} {'helper items/s':>15} {'raw items/s':>12} {'ratio':>6} {'dup':>4} {'miss':>5}"
    )
    print(header)
    print("-" * len(header))
    for name, r in engines.items():
        if "skipped" in r:
            print(f"{name:<11} skipped: {r['skipped']}")
            continue
        dup = r["helper"]["duplicates"] + r["raw"]["duplicates"]
        miss = r["helper"]["missing"] + r["raw"]["missing"]
        print(f"{name:<11} {r['server_version']:<9} {r['helper']['items_per_s']:>15,.0f} "
              f"{r['raw']['items_per_s']:>12,.0f} {r['ratio']:>6.2f} {dup:>4} {miss:>5}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--owner", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.url, args.owner, args.batch)
        return

    started = time.monotonic()
    load_before = os.getloadavg()
    engines: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines.split(","):
            try:
                engines[engine] = bench_engine(engine, Path(tmp), args)
            except Exception as exc:  # an unreachable server is reported, the other engines still run
                engines[engine] = {"skipped": explain(exc, ADMIN_URLS.get(engine, "sqlite://"))}
    pg = engines.get("postgresql", {})
    ran = [r for r in engines.values() if "skipped" not in r]
    targets = {
        "postgresql_helper_ge_3000_items_per_s": "helper" in pg and pg["helper"]["items_per_s"] >= 3000,
        "postgresql_ratio_ge_0.5": "ratio" in pg and pg["ratio"] >= 0.5,
        "no_duplicates": bool(ran) and all(r[m]["duplicates"] == 0 for r in ran for m in MODES),
        "none_missing": bool(ran) and all(r[m]["missing"] == 0 for r in ran for m in MODES),
    }
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.claims", *sys.argv[1:]]),
        "machine": machine(),
        "config": {"items": args.items, "batch": args.batch, "replicas": args.replicas, "rounds": args.rounds,
                   "lease_seconds": LEASE_SECONDS, "done": "fenced UPDATE per item, executemany per batch"},
        "engines": engines,
        "targets": targets,
        "wall_seconds": round(time.monotonic() - started, 1),
        # Other work on the machine skews the figures (the helper spends more CPU per item than the raw loop).
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "claims.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(engines)
    print()
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"{report['wall_seconds']} s; written to {path}")


if __name__ == "__main__":
    main()
