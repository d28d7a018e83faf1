# mypy: ignore-errors
"""APScheduler baselines for bench/replicas.py. Runs ONLY in the baseline venv (bench/.venv-baseline).

It imports nothing of this project: bench/replicas.py starts it with that venv's interpreter as a script,
passes everything on the command line and reads back the CSV files it writes. Each job appends, inside the
job, one line per execution

    schedule_id,scheduled_fire_time_iso,lag_seconds,node,lag_seconds

(lag = the job's start on the wall clock minus its scheduled fire time; the last column repeats it so the
file has the same shape as bench/recorder.py's), buffered in memory and written when the process ends.

Sub-commands:

    aps4-init   create APScheduler 4's tables and 100 interval schedules in a PostgreSQL database
    aps4        one APScheduler 4 scheduler process (SQLAlchemyDataStore + AsyncpgEventBroker) until --until
    aps3        one APScheduler 3 AsyncIOScheduler process, MemoryJobStore or SQLAlchemyJobStore (SQLite)
    plot        CDF of the lags per engine to PNG (matplotlib)

APScheduler 3 and 4 are the same distribution name, so they cannot share one venv: APScheduler 4 lives in
the venv's site-packages and APScheduler 3 in a --target directory that bench/replicas.py puts first on
PYTHONPATH for the `aps3` sub-command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

SAMPLES: list[str] = []
NODE = ""


def flush(path: str) -> None:
    Path(path).write_text("".join(SAMPLES))


def load_offsets(path: str | None, services: int) -> list[float]:
    """Per-schedule sub-second start offsets (the same fire pattern as the project's run), else all 0."""
    if not path:
        return [0.0] * services
    offsets = json.loads(Path(path).read_text())
    return [float(offsets[i % len(offsets)]) for i in range(services)]


def at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# ---------------------------------------------------------------------------------------- APScheduler 4


async def record4() -> None:
    """The APScheduler 4 job: its scheduled fire time comes from the `current_job` context variable."""
    wall = time.time()
    from apscheduler import current_job

    job = current_job.get()
    fire = job.original_scheduled_time  # scheduled_fire_time minus jitter (there is none here)
    lag = wall - fire.timestamp()
    SAMPLES.append(f"{job.schedule_id},{fire.isoformat()},{lag:.6f},{NODE},{lag:.6f}\n")


def aps4_objects(url: str):
    from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
    from apscheduler.eventbrokers.asyncpg import AsyncpgEventBroker
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    return engine, SQLAlchemyDataStore(engine), AsyncpgEventBroker.from_async_sqla_engine(engine)


async def aps4_init(args: argparse.Namespace) -> None:
    from apscheduler import AsyncScheduler, CoalescePolicy, ConflictPolicy
    from apscheduler.triggers.interval import IntervalTrigger

    engine, store, broker = aps4_objects(args.url)
    offsets = load_offsets(args.offsets, args.services)
    async with AsyncScheduler(store, broker, identity="aps4-init") as scheduler:
        for i in range(args.services):
            start = args.start + offsets[i]
            await scheduler.add_schedule(
                record4, IntervalTrigger(seconds=1, start_time=at(start), end_time=at(start + args.seconds)),
                id=f"lag-{i:03d}", coalesce=CoalescePolicy.latest, misfire_grace_time=300,
                conflict_policy=ConflictPolicy.replace,
            )
    await engine.dispose()
    print(json.dumps({"apscheduler": version("apscheduler"), "sqlalchemy": version("sqlalchemy"),
                      "asyncpg": version("asyncpg"), "schedules": args.services}))


async def aps4_worker(args: argparse.Namespace) -> None:
    from apscheduler import AsyncScheduler

    engine, store, broker = aps4_objects(args.url)
    async with AsyncScheduler(store, broker, identity=NODE) as scheduler:
        await scheduler.start_in_background()
        await asyncio.sleep(max(0.0, args.until - time.time()))
        await scheduler.stop()
        await scheduler.wait_until_stopped()
    await engine.dispose()


# ---------------------------------------------------------------------------------------- APScheduler 3

FIRE_TIMES = None  # contextvars.ContextVar set by the executor below, read inside the job


async def record3(schedule_id: str) -> None:
    """The APScheduler 3 job. APScheduler 3 does not give a job its fire time, so the executor hands it over."""
    wall = time.time()
    fire = FIRE_TIMES.get()
    lag = wall - fire.timestamp()
    SAMPLES.append(f"{schedule_id},{fire.astimezone(UTC).isoformat()},{lag:.6f},{NODE},{lag:.6f}\n")


async def aps3_main(args: argparse.Namespace) -> None:
    import contextvars

    from apscheduler.executors.asyncio import AsyncIOExecutor
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    global FIRE_TIMES
    FIRE_TIMES = contextvars.ContextVar("fire_time")

    class FireTimeExecutor(AsyncIOExecutor):
        """AsyncIOExecutor that sets the fire time in the context the job's task is created with."""

        def _do_submit_job(self, job, run_times):
            token = FIRE_TIMES.set(run_times[-1])  # coalesced: one execution for the latest fire time
            try:
                return super()._do_submit_job(job, run_times)
            finally:
                FIRE_TIMES.reset(token)

    if args.store == "memory":
        store = MemoryJobStore()
    else:
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

        store = SQLAlchemyJobStore(url=args.url)
    scheduler = AsyncIOScheduler(
        jobstores={"default": store}, executors={"default": FireTimeExecutor()}, timezone=UTC,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300},
    )
    offsets = load_offsets(args.offsets, args.services)
    for i in range(args.services):
        start = args.start + offsets[i]
        scheduler.add_job(record3, IntervalTrigger(seconds=1, start_date=at(start), end_date=at(start + args.seconds),
                                                   timezone=UTC),
                          id=f"lag-{i:03d}", args=[f"lag-{i:03d}"], replace_existing=True)
    scheduler.start()
    await asyncio.sleep(max(0.0, args.until - time.time()))
    scheduler.shutdown(wait=False)
    await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------------------- plot


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(args.input).read_text())
    out = Path(args.out)
    for engine, series in data["engines"].items():
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for label, lags in series.items():
            if not lags:
                continue
            ordered = sorted(max(lag, 0.01) for lag in lags)  # log axis: clamp sub-10 µs lags
            n = len(ordered)
            ax.step(ordered, [(k + 1) / n * 100 for k in range(n)], where="post", label=f"{label} (n={n})")
        for target in data.get("targets_ms", {}).get(engine, []):
            ax.axvline(target, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("lag: job start minus scheduled fire time (ms, log scale)")
        ax.set_ylabel("% of runs at or below")
        ax.set_ylim(0, 100.5)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{data.get('title', 'fire lag')}: {engine}")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = out / f"replicas-{engine}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(path)


# ---------------------------------------------------------------------------------------- main


def main() -> None:
    global NODE
    parser = argparse.ArgumentParser(prog="baseline_apscheduler.py")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("aps4-init", "aps4", "aps3"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--url", default="")
        cmd.add_argument("--services", type=int, default=100)
        cmd.add_argument("--start", type=float, default=0.0, help="epoch of the first fire time")
        cmd.add_argument("--seconds", type=float, default=60.0, help="how long the schedules fire")
        cmd.add_argument("--until", type=float, default=0.0, help="epoch at which the process stops")
        cmd.add_argument("--offsets", default="", help="JSON list of per-schedule start offsets (seconds)")
        cmd.add_argument("--identity", default="baseline")
        cmd.add_argument("--csv", default="")
        if name == "aps3":
            cmd.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    cmd = sub.add_parser("plot")
    cmd.add_argument("--input", required=True)
    cmd.add_argument("--out", required=True)
    cmd = sub.add_parser("versions")
    args = parser.parse_args()
    if args.command == "plot":
        plot(args)
        return
    if args.command == "versions":
        print(json.dumps({"apscheduler": version("apscheduler")}))
        return
    NODE = args.identity
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM from the parent still writes the CSV
    try:
        if args.command == "aps4-init":
            asyncio.run(aps4_init(args))
        elif args.command == "aps4":
            asyncio.run(aps4_worker(args))
        else:
            asyncio.run(aps3_main(args))
    finally:
        if args.csv:
            flush(args.csv)


if __name__ == "__main__":
    main()
