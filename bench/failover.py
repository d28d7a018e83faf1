"""Crash takeover: kill -9 the replica running a fire time, time the retry elsewhere and the next fire.

    python -m bench.failover [--ttl 5,60] [--repeat 10,3] [--engine postgresql] [--out bench/results]

For each lock TTL (paired with the repeat count at the same position) a fresh database is created on the
engine (dropped afterwards) and three `python -m runner --scheduler=probe` replicas are started on it
(tests.support.services: PROBE_INTERVAL=@every 10s, PROBE_DURATION=3s, PROBE_MAX_RETRIES=2,
SCHEDULER_LOCK_TTL=ttl, SCHEDULER_HEARTBEAT_INTERVAL=ttl/5). Then, ``repeat`` times:

1. wait for a scheduled run (attempt 1) to be in flight and let it run 0.5 s;
2. kill -9 its holder, the replica named in the run's `node` column;
3. measure, from the kill: the start of the retried attempt (attempt 2 of the same fire time, on a
   survivor) and the start of the next fire time that ran (attempt 1 of a later fire time), with that
   fire's own lag and the fire times recorded as skipped in between (the dead node's lease still held);
4. restart the killed replica under the same SCHEDULER_INSTANCE_ID and wait until it is ready.

Finally the replicas get SIGTERM and the runs table is audited: duplicates (two succeeded runs of one fire
time: must be 0), missing fire times between the first and the last, outcomes by status.

Expected takeover: the lease expires at most TTL after the victim's last renewal (renewals come every
heartbeat) and a survivor notices at its next heartbeat, so kill -> retry lies in about
[TTL - heartbeat, TTL + heartbeat]. Results are merged per TTL into bench/results/failover.json (a run for
one TTL keeps the other TTL's last result) and rendered to bench/results/failover.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.core import machine
from bench.replicas import fresh_database, log
from storage.engine import create_engine
from storage.migrate import upgrade
from storage.schema import runs
from tests.support.processes import Proc, base_env, free_port

ROOT = Path(__file__).resolve().parents[1]
INTERVAL = timedelta(seconds=10)
DURATION = "3s"
MAX_RETRIES = "2"
REPLICAS = ("a", "b", "c")
POLL = 0.05  # seconds between reads of the runs table while waiting


class Fleet:
    """Three runner replicas of the probe service on one database; any of them can be killed and restarted."""

    def __init__(self, url: str, ttl: float, directory: Path) -> None:
        self.url = url
        self.ttl = ttl
        self.heartbeat = ttl / 5
        self.directory = directory
        self.procs: dict[str, Proc] = {}
        self.retired: list[Proc] = []

    def start(self, name: str) -> Proc:
        env = base_env(
            DATABASE_URL=self.url, SCHEDULER_INSTANCE_ID=name, SCHEDULER_LOCK_TTL=f"{self.ttl:g}",
            SCHEDULER_HEARTBEAT_INTERVAL=f"{self.heartbeat:g}", SCHEDULER_SHUTDOWN_GRACE="10s",
            PROBE_INTERVAL=f"@every {INTERVAL.total_seconds():g}s", PROBE_DURATION=DURATION,
            PROBE_MAX_RETRIES=MAX_RETRIES,
        )
        suffix = sum(1 for p in self.retired if p.name == name)
        proc = Proc(["runner", "--scheduler=probe"], env, free_port(), self.directory, f"{name}-{suffix}")
        proc.name = name
        self.procs[name] = proc
        return proc

    async def ready(self, name: str) -> None:
        await anyio.to_thread.run_sync(lambda: self.procs[name].wait_ready(60))

    def kill(self, name: str) -> datetime:
        proc = self.procs.pop(name)
        proc.popen.send_signal(signal.SIGKILL)
        killed_at = datetime.now(UTC)
        proc.popen.wait(30)
        self.retired.append(proc)
        return killed_at

    async def stop(self) -> dict[str, int]:
        for proc in self.procs.values():
            proc.popen.send_signal(signal.SIGTERM)
        codes = {name: await anyio.to_thread.run_sync(proc.wait_exit, 60) for name, proc in self.procs.items()}
        self.close()
        return codes

    def close(self) -> None:
        for proc in [*self.procs.values(), *self.retired]:
            proc.close()


async def fetch(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(runs).where(runs.c.scheduler == "probe"))
        return [dict(row) for row in rows.mappings()]


async def wait_for(engine: AsyncEngine, check: Any, limit: float, what: str) -> Any:
    """Read the runs table every POLL seconds until `check(rows)` is truthy; TimeoutError after `limit` s."""
    with anyio.move_on_after(limit):
        while True:
            found = check(await fetch(engine))
            if found:
                return found
            await anyio.sleep(POLL)
    raise TimeoutError(f"timed out after {limit:g}s waiting for {what}")


def seconds(a: datetime, b: datetime) -> float:
    return round((a - b).total_seconds(), 3)


async def one_kill(fleet: Fleet, engine: AsyncEngine, after: datetime) -> dict[str, Any]:
    """Kill the holder of the next in-flight scheduled run (started after `after`), measure, restart it."""

    def in_flight(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((r for r in rows if r["status"] == "running" and r["attempt"] == 1 and r["trigger"] == "schedule"
                     and r["started_at"] is not None and r["started_at"] > after and r["node"] in fleet.procs), None)

    victim = await wait_for(engine, in_flight, INTERVAL.total_seconds() * 3, "a scheduled run in flight")
    await anyio.sleep(0.5)  # a crash mid-run, not at the claim
    node = victim["node"]
    killed_at = fleet.kill(node)
    log(f"  killed {node} 0.5 s into the run of {victim['scheduled_for']:%H:%M:%S}")

    def retried(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((r for r in rows if r["scheduled_for"] == victim["scheduled_for"] and r["attempt"] == 2
                     and r["started_at"] is not None), None)

    retry = await wait_for(engine, retried, fleet.ttl + fleet.heartbeat + 30, "the retried attempt")

    def next_fire(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        later = sorted((r for r in rows if r["scheduled_for"] > victim["scheduled_for"] and r["attempt"] == 1
                        and r["started_at"] is not None and r["status"] in ("running", "succeeded")),
                       key=lambda r: r["scheduled_for"])
        return later[0] if later else None

    fire = await wait_for(engine, next_fire, fleet.ttl + fleet.heartbeat + 60, "the next fire time to run")
    rows = await fetch(engine)
    skipped = sorted(r["scheduled_for"] for r in rows if victim["scheduled_for"] < r["scheduled_for"]
                     < fire["scheduled_for"] and r["attempt"] == 1 and r["status"] != "succeeded")
    old = next(r for r in rows if r["id"] == victim["id"])
    restart_began = time.monotonic()
    fleet.start(node)
    await fleet.ready(node)
    return {
        "ready_at": datetime.now(UTC),
        "victim": node,
        "scheduled_for": victim["scheduled_for"].isoformat(),
        "killed_after_run_start_s": seconds(killed_at, victim["started_at"]),
        "retry_started_after_kill_s": seconds(retry["started_at"], killed_at),
        "retry_node": retry["node"],
        "retry_status_when_seen": retry["status"],
        "killed_run_status": old["status"],
        "next_fire_scheduled_for": fire["scheduled_for"].isoformat(),
        "next_fire_started_after_kill_s": seconds(fire["started_at"], killed_at),
        "next_fire_lag_s": seconds(fire["started_at"], fire["scheduled_for"]),
        "next_fire_node": fire["node"],
        "fire_times_not_run_in_between": len(skipped),
        "restart_ready_s": round(time.monotonic() - restart_began, 2),
    }


def audit(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_time: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["trigger"] in ("schedule", "retry"):
            by_time[row["scheduled_for"]].append(row)
    times = sorted(by_time)
    succeeded = Counter(t for t, group in by_time.items() for r in group if r["status"] == "succeeded")
    return {
        "fire_times": len(times),
        "duplicates": sum(count - 1 for count in succeeded.values() if count > 1),
        "missing": round((times[-1] - times[0]) / INTERVAL) + 1 - len(times) if times else 0,
        "without_success": sum(1 for t in times if succeeded[t] == 0),
        "statuses": dict(Counter(r["status"] for r in rows)),
        "attempts": dict(Counter(str(r["attempt"]) for r in rows)),
    }


def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": min(values), "median": round(statistics.median(values), 3), "max": max(values),
            "mean": round(statistics.fmean(values), 3)}


async def run_ttl(engine_name: str, ttl: float, repeat: int, work: Path) -> dict[str, Any]:
    directory = work / f"ttl-{ttl:g}"
    directory.mkdir()
    began = time.monotonic()
    with fresh_database(engine_name, directory) as url:
        await upgrade(url)
        fleet = Fleet(url, ttl, directory)
        engine = create_engine(url, pool_size=1)
        kills: list[dict[str, Any]] = []
        error: str | None = None
        try:
            for name in REPLICAS:
                fleet.start(name)
            for name in REPLICAS:
                await fleet.ready(name)
            log(f"ttl {ttl:g}s (heartbeat {fleet.heartbeat:g}s): 3 replicas ready; {repeat} kills")
            after = datetime.now(UTC)
            for i in range(repeat):
                result = await one_kill(fleet, engine, after)
                after = result.pop("ready_at")  # the next victim is a run that began with all three up
                kills.append(result)
                log(f"  {i + 1}/{repeat}: retry {result['retry_started_after_kill_s']}s after the kill on "
                    f"{result['retry_node']}, next fire {result['next_fire_started_after_kill_s']}s after "
                    f"(lag {result['next_fire_lag_s']}s, {result['fire_times_not_run_in_between']} not run between)")
            await anyio.sleep(4)  # the last run (3 s) finishes before the audit
        except (TimeoutError, AssertionError) as exc:
            error = str(exc)[:2000]
            log(f"ttl {ttl:g}s: {error}")
        finally:
            exit_codes: dict[str, int] = {}
            with anyio.CancelScope(shield=True):
                try:
                    exit_codes = await fleet.stop()
                except AssertionError as exc:  # a replica that would not stop: killed by close()
                    log(f"ttl {ttl:g}s: {exc}"[:500])
                fleet.close()
        rows = await fetch(engine)
        await engine.dispose()
    checked = audit(rows)
    takeover = [k["retry_started_after_kill_s"] for k in kills]
    bound = ttl + ttl / 5 + 1.0
    return {
        "engine": engine_name,
        "ttl_s": ttl,
        "heartbeat_s": ttl / 5,
        "repeats": repeat,
        "completed": len(kills),
        "error": error,
        "takeover_s": spread(takeover),
        "next_fire_after_kill_s": spread([k["next_fire_started_after_kill_s"] for k in kills]),
        "next_fire_lag_s": spread([k["next_fire_lag_s"] for k in kills]),
        "fire_times_not_run_per_kill": spread([float(k["fire_times_not_run_in_between"]) for k in kills]),
        "expected_takeover_window_s": [round(ttl - ttl / 5, 3), round(ttl + ttl / 5, 3)],
        "kills": kills,
        "audit": checked,
        "exit_codes": exit_codes,
        "targets": {
            "0 duplicates": checked["duplicates"] == 0,
            "every kill retried on a survivor": len(kills) == repeat
            and all(k["retry_node"] != k["victim"] for k in kills),
            "killed runs recorded abandoned": all(k["killed_run_status"] == "abandoned" for k in kills),
            f"takeover <= TTL + heartbeat + 1 s ({bound:g} s)": bool(takeover) and max(takeover) <= bound,
            "0 missing fire times": checked["missing"] == 0,
        },
        "elapsed_s": round(time.monotonic() - began, 1),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Failover: kill -9 of the replica running a fire time",
        "",
        "Three `python -m runner --scheduler=probe` replicas (PROBE_INTERVAL=@every 10s, PROBE_DURATION=3s, "
        "PROBE_MAX_RETRIES=2, SCHEDULER_HEARTBEAT_INTERVAL=TTL/5); the holder of an in-flight run is killed "
        "0.5 s into it and restarted after the measurement. Times in seconds from the kill. Generated by "
        "`python -m bench.failover`; see bench/README.md.",
        "",
        "| TTL | heartbeat | engine | kills | kill → retry start (min / median / max) | kill → next fire start "
        "(median / max) | next fire lag (max) | fire times not run per kill (max) | duplicates | missing | when |",
        "| ---: | ---: | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for ttl in sorted(report["ttls"], key=float):
        r = report["ttls"][ttl]
        t, n = r["takeover_s"], r["next_fire_after_kill_s"]
        lines.append(
            f"| {r['ttl_s']:g} s | {r['heartbeat_s']:g} s | {r['engine']} | {r['completed']}/{r['repeats']} "
            f"| {t.get('min', '-')} / {t.get('median', '-')} / {t.get('max', '-')} "
            f"| {n.get('median', '-')} / {n.get('max', '-')} | {r['next_fire_lag_s'].get('max', '-')} "
            f"| {r['fire_times_not_run_per_kill'].get('max', '-')} | {r['audit']['duplicates']} "
            f"| {r['audit']['missing']} | {r['when']} |"
        )
    lines += ["", "## Targets", "", "| TTL | target | result |", "| ---: | --- | --- |"]
    for ttl in sorted(report["ttls"], key=float):
        r = report["ttls"][ttl]
        lines += [f"| {r['ttl_s']:g} s | {name} | {'PASS' if ok else 'FAIL'} |" for name, ok in r["targets"].items()]
    lines += ["", "## Notes", ""]
    for ttl in sorted(report["ttls"], key=float):
        r = report["ttls"][ttl]
        low, high = r["expected_takeover_window_s"]
        lines.append(f"- TTL {r['ttl_s']:g} s: expected kill → retry within about {low:g} to {high:g} s (lease "
                     f"expiry after the last renewal, noticed at a survivor's next heartbeat); outcomes "
                     f"{r['audit']['statuses']}; attempts {r['audit']['attempts']}; {r['elapsed_s']} s wall time."
                     + (f" Error: {r['error']}" if r["error"] else ""))
    lines.append("- Fire times that come due while the dead node's lease is still held are claimed but recorded "
                 "`skipped` (the lease says a run is in progress), so with a long TTL several fire times are not "
                 "run during a takeover; they are recorded, not missing.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.failover")
    parser.add_argument("--ttl", default="5,60", help="comma list of lock TTLs in seconds")
    parser.add_argument("--repeat", default="10,3", help="kills per TTL, comma list matching --ttl (or one number)")
    parser.add_argument("--engine", default="postgresql", choices=("postgresql", "mysql", "sqlite"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    ttls = [float(v) for v in args.ttl.split(",") if v]
    repeats = [int(v) for v in args.repeat.split(",") if v]
    if len(repeats) == 1:
        repeats *= len(ttls)
    if len(repeats) != len(ttls):
        parser.error("--repeat needs one number, or one per --ttl")
    path = args.out / "failover.json"
    report: dict[str, Any] = {"ttls": {}}
    if path.exists():
        with contextlib.suppress(ValueError):
            report = json.loads(path.read_text())
    report["machine"] = machine()
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        for ttl, repeat in zip(ttls, repeats, strict=True):
            result = anyio.run(run_ttl, args.engine, ttl, repeat, Path(tmp))
            result["when"] = datetime.now(UTC).isoformat(timespec="seconds")
            report["ttls"][f"{ttl:g}"] = result
            log(f"ttl {ttl:g}s: takeover {result['takeover_s']}; audit {result['audit']}")
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = args.out / "failover.md"
    md.write_text(markdown(report))
    print(md.read_text())
    print(f"written to {path} and {md}")


if __name__ == "__main__":
    main()
