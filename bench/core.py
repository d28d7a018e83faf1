"""Core figures: ready time and RSS of a runner, idle statements/s, fire lag of 100 x @every 1s on SQLite.

    python -m bench.core [--seconds 60] [--services 100] [--out bench/results]

Lag is taken inside the run (start of run_once minus its scheduled time). The baseline is a plain anyio
timer loop in the same process (no database, no claims): the floor this machine's event loop allows.
The database audit counts every fire time: exactly one succeeded run each, none missing between the
first and the last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
from sqlalchemy import event, select

from bench.services import LagProbe
from manager import app
from manager.config import load_config
from storage.migrate import upgrade
from storage.schema import runs

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(lags: list[float]) -> dict[str, float]:
    ms = [lag * 1000 for lag in lags]
    return {
        "samples": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "within_50ms_pct": round(100 * sum(m <= 50 for m in ms) / len(ms), 3),
    }


def write_config(directory: Path, services: int, interval: str) -> Path:
    path = directory / "bench.yaml"
    lines = ["services:", "  run-history-retention:", "    enabled: false"]
    for i in range(services):
        lines += [f"  lag-{i:03d}:", "    type: lag-probe", f"    interval: '{interval}'"]
    path.write_text("\n".join(lines) + "\n")
    return path


async def punctuality(directory: Path, services: int, seconds: float) -> dict[str, Any]:
    url = f"sqlite:///{directory / 'punctuality.db'}"
    await upgrade(url)
    os.environ.update({"DATABASE_URL": url, "SCHEDULER_PLUGINS": "bench.services"})
    platform_ = app.build(load_config(write_config(directory, services, "@every 1s")))
    LagProbe.samples.clear()
    async with anyio.create_task_group() as tg:
        await tg.start(platform_.coordinator.run)
        await tg.start(platform_.manager.run)
        await anyio.sleep(seconds)
        platform_.manager.request_shutdown()
        await platform_.manager.stopped.wait()
        tg.cancel_scope.cancel()
    async with platform_.engine.connect() as conn:
        rows = (await conn.execute(select(runs.c.scheduler, runs.c.scheduled_for, runs.c.status))).all()
    await platform_.engine.dispose()
    return {"lag": summarize([lag for _, lag in LagProbe.samples]), "audit": audit(rows, timedelta(seconds=1))}


def audit(rows: Any, every: timedelta) -> dict[str, int]:
    """Every fire time between a service's first and last must have exactly one succeeded run."""
    by_service: dict[str, dict[datetime, list[str]]] = defaultdict(lambda: defaultdict(list))
    for scheduler, scheduled_for, status in rows:
        by_service[scheduler][scheduled_for].append(status)
    fire_times = duplicates = missing = not_succeeded = 0
    for times in by_service.values():
        ordered = sorted(times)
        span = round((ordered[-1] - ordered[0]) / every) + 1
        missing += span - len(ordered)
        for statuses in times.values():
            fire_times += 1
            duplicates += max(0, statuses.count("succeeded") - 1)
            not_succeeded += "succeeded" not in statuses
    return {"services": len(by_service), "fire_times": fire_times, "duplicates": duplicates, "missing": missing,
            "not_succeeded": not_succeeded}


async def timer_baseline(services: int, seconds: float) -> dict[str, float]:
    """The same fire pattern with bare anyio timers: what the event loop alone achieves."""
    lags: list[float] = []
    start = time.time() + 1

    async def timer() -> None:
        k = 1
        while True:
            due = start + k
            await anyio.sleep(max(0.0, due - time.time()))
            lags.append(time.time() - due)
            k += 1

    with anyio.move_on_after(seconds + 1):
        async with anyio.create_task_group() as tg:
            for _ in range(services):
                tg.start_soon(timer)
    return summarize(lags)


async def idle_statements(directory: Path, seconds: float) -> dict[str, float]:
    """Statements per second with services that have nothing due (no probes calling /readyz)."""
    url = f"sqlite:///{directory / 'idle.db'}"
    await upgrade(url)
    os.environ.update({"DATABASE_URL": url, "SCHEDULER_PLUGINS": "bench.services"})
    platform_ = app.build(load_config(write_config(directory, 3, "@every 1h")))
    count = 0

    def counter(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        nonlocal count
        count += statement != "BEGIN"  # SQLite's explicit BEGIN is not a statement of ours

    event.listen(platform_.engine.sync_engine, "before_cursor_execute", counter)
    async with anyio.create_task_group() as tg:
        await tg.start(platform_.coordinator.run)  # its heartbeat is idle traffic too (default 15 s)
        await tg.start(platform_.manager.run)
        count = 0  # start-up reads and state writes are not idle traffic
        await anyio.sleep(seconds)
        idle = count
        platform_.manager.request_shutdown()
        await platform_.manager.stopped.wait()
        tg.cancel_scope.cancel()
    await platform_.engine.dispose()
    return {"seconds": seconds, "statements": idle, "per_second": round(idle / seconds, 4), "services": 3}


def runner_footprint(directory: Path) -> dict[str, float]:
    """Wall time from process start to /readyz 200, and RSS after 3 s idle, of `python -m runner`."""
    url = f"sqlite:///{directory / 'footprint.db'}"
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "manager", "migrate"], env=env, check=True, capture_output=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "runner", "--scheduler=run-history-retention", "--port",
                             str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = started + 30
            while time.monotonic() < deadline:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.005)
            ready = time.monotonic() - started
        time.sleep(3)
        rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                      if line.startswith("VmRSS:"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return {"ready_seconds": round(ready, 3), "rss_mb": round(rss_kb / 1024, 1), "exit_code": proc.returncode}


def machine() -> dict[str, Any]:
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    return {"cores": os.cpu_count(), "memory": mem.split(":")[1].strip(), "python": platform.python_version(),
            "platform": platform.platform()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        footprint = runner_footprint(directory)
        idle = anyio.run(idle_statements, directory, 60.0)
        punctual = anyio.run(punctuality, directory, args.services, args.seconds)
        baseline = anyio.run(timer_baseline, args.services, min(args.seconds, 30.0))
    lag = punctual["lag"]
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "footprint": footprint,
        "idle": idle,
        "punctuality": {"services": args.services, "seconds": args.seconds, "engine": "sqlite", **punctual,
                        "baseline_timers": baseline,
                        "p99_ratio_to_timers": round(lag["p99_ms"] / max(baseline["p99_ms"], 0.001), 2)},
        "targets": {
            "rss_le_70mb": footprint["rss_mb"] <= 70,
            "ready_le_2s": footprint["ready_seconds"] <= 2,
            "idle_le_1_statement_per_s": idle["per_second"] <= 1,
            "p99_le_30ms": lag["p99_ms"] <= 30,
            "exactly_once": punctual["audit"]["duplicates"] == 0 and punctual["audit"]["missing"] == 0
            and punctual["audit"]["not_succeeded"] == 0,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "core.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    for name, ok in report["targets"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
