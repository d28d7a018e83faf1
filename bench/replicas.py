"""Punctuality and exactly-once of 100 services `@every 1s` across three `python -m manager` replicas.

    python -m bench.replicas [--seconds 60] [--services 100] [--replicas 3]
                             [--engines sqlite,postgresql,mysql] [--baselines aps4,aps3-memory,aps3-sqlite]
                             [--out bench/results]

For every engine a fresh database is created (PostgreSQL and MariaDB: `tests.db.create_database`, dropped
afterwards; SQLite: a new file shared by the replicas), migrated, and ``--replicas`` manager processes are
started on it, each with its own SCHEDULER_INSTANCE_ID, HTTP port and YAML config declaring ``--services``
instances of `lag-recorder` (bench/recorder.py) at ``@every 1s``, SCHEDULER_LOCK_TTL=5,
SCHEDULER_HEARTBEAT_INTERVAL=1, LOG_LEVEL=WARNING. Once every replica answers /readyz the window opens; after
``--seconds`` the replicas get SIGTERM and must exit 0.

Lag is taken inside the run: each run appends (service, scheduled time, start of run_once minus scheduled
time, node) to its replica's CSV file. The figures cover the fire times scheduled inside the window (all
replicas up); fire times scheduled while replicas were still starting are reported apart. The audit reads
the runs table: for every service, every fire time between its first and last must have exactly one
succeeded run (duplicates, missing fire times and fire times without a success are counted).

Baselines, in the same run, in their own venv (bench/.venv-baseline, made from
bench/requirements-baseline.txt; nothing of them is installed in the project):

* ``aps4``: APScheduler 4 (pre-release) with SQLAlchemyDataStore and AsyncpgEventBroker on the same
  PostgreSQL server (fresh database), three scheduler processes, the same number of 1 s interval schedules
  for the same duration; the job reads its scheduled fire time from `apscheduler.current_job`.
* ``aps3-memory`` / ``aps3-sqlite``: APScheduler 3.11 AsyncIOScheduler, one process, MemoryJobStore or
  SQLAlchemyJobStore on a SQLite file.

The baselines' schedules start at the same sub-second phases as this run's services (their persisted
interval anchors), so every scheduler faces the same fire pattern. Their lag is taken inside the job and
audited the same way (from the jobs' own records). Ratios are baseline p99 / ours p99 on the same engine
(APScheduler 3 memory: against ours on SQLite, the only other set-up without a server).

Writes bench/results/replicas.json, bench/results/replicas.md and (matplotlib in the baseline venv)
bench/results/replicas-<engine>.png.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import select
from sqlalchemy.engine import make_url

from bench.core import audit, machine, summarize
from storage.engine import create_engine
from storage.migrate import upgrade
from storage.schema import runs, service_state
from tests.db import create_database, drop_database
from tests.support.processes import Proc, base_env, free_port

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
BASELINE_VENV = BENCH / ".venv-baseline"
REQUIREMENTS = BENCH / "requirements-baseline.txt"
BASELINE_SCRIPT = BENCH / "baseline_apscheduler.py"
# APScheduler 3 is installed with `pip --target` here; the directory is named site-packages so that linters
# (ruff excludes any `site-packages` directory) leave the third-party code alone like the venv's own.
APS3_DIR = BASELINE_VENV / "aps3" / "site-packages"
ADMIN_URLS = {
    "postgresql": os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    "mysql": os.environ.get("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/mysql"),
}
ENGINES = ("sqlite", "postgresql", "mysql")
BASELINES = ("aps4", "aps3-memory", "aps3-sqlite")
LOCK_TTL, HEARTBEAT = "5", "1"
P99_TARGET_MS = {"postgresql": 20.0, "mysql": 20.0, "sqlite": 30.0}
WITHIN_MS = 50.0
APS4_RATIO_TARGET = 5.0
APS4_DRAIN = 10.0  # seconds APScheduler 4 may keep running after the last fire time, to work off a backlog
EVERY = timedelta(seconds=1)
LABELS = {"ours": "ours (3 replicas)", "aps4": "APScheduler 4 (3 processes)",
          "aps3-memory": "APScheduler 3 memory (1 process)", "aps3-sqlite": "APScheduler 3 SQLite (1 process)"}


@dataclass(frozen=True)
class Sample:
    service: str
    scheduled_for: datetime
    lag: float  # seconds, on the scheduler's own clock
    node: str
    wall_lag: float  # seconds, on the machine's wall clock


def read_samples(paths: list[Path]) -> list[Sample]:
    samples: list[Sample] = []
    for path in paths:
        if not path.exists():
            continue
        with path.open(newline="") as handle:
            for row in csv.reader(handle):
                if len(row) < 4:
                    continue  # a torn last line (a process killed mid-write); never seen after SIGTERM
                wall = float(row[4]) if len(row) > 4 else float(row[2])
                samples.append(Sample(row[0], datetime.fromisoformat(row[1]), float(row[2]), row[3], wall))
    return samples


def lag_stats(values: list[float]) -> dict[str, float]:
    return summarize(values) if values else {"samples": 0}


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------------------ databases


@contextlib.contextmanager
def fresh_database(engine: str, directory: Path) -> Iterator[str]:
    """A new empty database's plain URL, dropped afterwards (SQLite: a new file in the run's directory)."""
    if engine == "sqlite":
        yield f"sqlite:///{directory / 'replicas.db'}"
        return
    admin = ADMIN_URLS[engine]
    url = create_database(admin)
    try:
        yield url
    finally:
        drop_database(admin, url)


async def read_db(url: str) -> tuple[list[Any], dict[str, datetime]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(
                select(runs.c.scheduler, runs.c.scheduled_for, runs.c.status, runs.c.node, runs.c.attempt,
                       runs.c.lag_seconds).where(runs.c.scheduler.like("lag-%"))
            )).all()
            anchors = {r.scheduler: r.anchor_at for r in (await conn.execute(
                select(service_state.c.scheduler, service_state.c.anchor_at)
                .where(service_state.c.scheduler.like("lag-%"))
            )) if r.anchor_at is not None}
    finally:
        await engine.dispose()
    return list(rows), anchors


# ------------------------------------------------------------------------------------------ our replicas


def write_config(path: Path, services: int, csv_path: Path) -> None:
    lines = ["services:", "  run-history-retention:", "    enabled: false", "  lag-recorder:", "    enabled: false"]
    for i in range(services):
        lines += [f"  lag-{i:03d}:", "    type: lag-recorder", "    interval: '@every 1s'", "    max_retries: 0",
                  f"    csv_path: '{csv_path}'"]
    path.write_text("\n".join(lines) + "\n")


def phases(anchors: dict[str, datetime], services: int) -> list[float]:
    """Each service's sub-second phase (anchor mod 1 s, relative to the earliest), in service order."""
    if not anchors:
        return []
    base = min(anchors.values())
    return [round(((anchors[f"lag-{i:03d}"] - base).total_seconds()) % 1.0, 6) if f"lag-{i:03d}" in anchors else 0.0
            for i in range(services)]


def run_ours(engine: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One engine's run; a replica that never gets ready or will not stop is reported, not raised."""
    try:
        return measure_ours(engine, args, work)
    except (AssertionError, OSError, subprocess.SubprocessError) as exc:
        log(f"{engine}: failed: {str(exc)[:1000]}")
        return {"engine": engine, "error": str(exc)[:4000], "_phases": []}


def measure_ours(engine: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    directory = work / engine
    directory.mkdir()
    with fresh_database(engine, directory) as url:
        anyio.run(upgrade, url)
        procs: list[Proc] = []
        csvs: list[Path] = []
        load_before = load_average()
        try:
            for i in range(args.replicas):
                name = f"replica-{i}"
                csv_path = directory / f"{name}.csv"
                config = directory / f"{name}.yaml"
                write_config(config, args.services, csv_path)
                env = base_env(
                    DATABASE_URL=url, SCHEDULER_INSTANCE_ID=name, SCHEDULER_LOCK_TTL=LOCK_TTL,
                    SCHEDULER_HEARTBEAT_INTERVAL=HEARTBEAT, SCHEDULER_PLUGINS="bench.recorder", LOG_LEVEL="WARNING",
                    SCHEDULER_SHUTDOWN_GRACE="10s",
                )
                csvs.append(csv_path)
                procs.append(Proc(["manager", "--config", str(config)], env, free_port(), directory, name))
            started = time.monotonic()
            for proc in procs:
                proc.wait_ready(120)
            ready_after = time.monotonic() - started
            window_start = datetime.now(UTC)
            log(f"{engine}: {args.replicas} replicas ready after {ready_after:.1f}s; measuring {args.seconds:g}s")
            time.sleep(args.seconds)
            window_end = datetime.now(UTC)
            for proc in procs:
                proc.popen.send_signal(signal.SIGTERM)
            exit_codes: dict[str, int | str] = {}
            for proc in procs:
                try:
                    exit_codes[proc.name] = proc.wait_exit(60)
                except AssertionError:  # wait_exit killed it
                    exit_codes[proc.name] = "still running 60 s after SIGTERM: killed"
        finally:
            for proc in procs:
                proc.close()
        logs = log_summary([proc.log for proc in procs])
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for proc in procs:
                shutil.copy(proc.log, args.keep_logs / f"replicas-{engine}-{proc.name}.log")
        rows, anchors = anyio.run(read_db, url)
    samples = read_samples(csvs)
    inside = [s for s in samples if window_start <= s.scheduled_for <= window_end]
    before = [s for s in samples if s.scheduled_for < window_start]
    succeeded = [r for r in rows if r.status == "succeeded"]
    phase = phases(anchors, args.services)
    worst = sorted(inside, key=lambda s: s.lag, reverse=True)[:5]
    return {
        "engine": engine,
        "replicas": args.replicas,
        "ready_seconds": round(ready_after, 2),
        "window": {"start": window_start.isoformat(), "end": window_end.isoformat()},
        "lag": lag_stats([s.lag for s in inside]),
        "lag_wall_clock": lag_stats([s.wall_lag for s in inside]),
        "lag_while_replicas_started": lag_stats([s.lag for s in before]),
        "wake_up_lag": lag_stats([float(r.lag_seconds) for r in succeeded
                                if r.lag_seconds is not None and window_start <= r.scheduled_for <= window_end]),
        "worst": [{"service": s.service, "scheduled_for": s.scheduled_for.isoformat(), "lag_ms": round(s.lag * 1000, 3),
                   "node": s.node} for s in worst],
        "audit": with_not_run({**audit([(r.scheduler, r.scheduled_for, r.status) for r in rows], EVERY),
                               "statuses": dict(Counter(r.status for r in rows)),
                               "recorded_runs": len(samples), "succeeded_rows": len(succeeded)}),
        "audit_window": audit([(r.scheduler, r.scheduled_for, r.status) for r in rows
                               if window_start <= r.scheduled_for <= window_end], EVERY),
        "succeeded_per_node": dict(sorted(Counter(r.node for r in succeeded).items())),
        "anchor_phase_span_ms": round((max(phase) - min(phase)) * 1000, 1) if phase else None,
        "exit_codes": exit_codes,
        "log_warnings": logs,
        "load_average": {"before": load_before, "after": load_average()},
        "_phases": phase,
        "_lags_ms": [round(s.lag * 1000, 3) for s in inside],
    }


def with_not_run(checked: dict[str, Any]) -> dict[str, Any]:
    """`not_run`: fire times (first to last of each service) without a succeeded run, whatever the reason."""
    return {**checked, "not_run": checked["missing"] + checked["not_succeeded"]}


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text().splitlines()[-lines:])


_LEVEL = re.compile(r"^\S+ \S+ (ERROR|WARNING|CRITICAL)\s+(.*)$")


def log_summary(paths: list[Path]) -> dict[str, Any]:
    """WARNING/ERROR lines of the replicas' logs, counted by message (service names and ids folded)."""
    counts: Counter[str] = Counter()
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            match = _LEVEL.match(line)
            if match:
                message = re.sub(r"lag-\d{3}", "lag-*", match.group(2))
                message = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", message)
                message = re.sub(r"\d{4}-\d\d-\d\d[T ][\d:.]+(\+00:00|Z)?", "<time>", message)
                counts[f"{match.group(1)} {message[:160]}"] += 1
    return {"lines": sum(counts.values()), "top": dict(counts.most_common(6))}


# ------------------------------------------------------------------------------------------ baselines


def requirement_lines() -> tuple[str, str]:
    """The baseline venv's requirements file and the APScheduler 3 requirement in its `# aps3:` line."""
    text = REQUIREMENTS.read_text()
    aps3 = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("# aps3:")), "")
    if not aps3:
        raise RuntimeError(f"{REQUIREMENTS} has no '# aps3: <requirement>' line")
    return text, aps3


def baseline_python() -> Path:
    """bench/.venv-baseline's interpreter, (re)built when the requirements file changed."""
    text, aps3 = requirement_lines()
    digest = hashlib.sha256(text.encode()).hexdigest()
    python = BASELINE_VENV / "bin" / "python"
    stamp = BASELINE_VENV / ".requirements-sha256"
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    log(f"building {BASELINE_VENV.relative_to(ROOT)} from {REQUIREMENTS.relative_to(ROOT)} (once)")
    shutil.rmtree(BASELINE_VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(BASELINE_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    # APScheduler 3 and 4 share a distribution name: 3 goes into its own directory, put first on PYTHONPATH.
    subprocess.run([*pip, "--no-deps", "--target", str(APS3_DIR), aps3], check=True)
    stamp.write_text(digest)
    return python


def baseline_env(aps3: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if aps3:
        env["PYTHONPATH"] = str(APS3_DIR)
    return env


def baseline_versions(python: Path) -> dict[str, str]:
    versions: dict[str, str] = {}
    for key, aps3 in (("apscheduler4", False), ("apscheduler3", True)):
        out = subprocess.run([str(python), str(BASELINE_SCRIPT), "versions"], env=baseline_env(aps3),
                             capture_output=True, text=True, check=True)
        versions[key] = json.loads(out.stdout)["apscheduler"]
    return versions


def run_script(python: Path, argv: list[str], work: Path, name: str, aps3: bool = False) -> subprocess.Popen[str]:
    with open(work / f"{name}.log", "w") as err:
        return subprocess.Popen([str(python), str(BASELINE_SCRIPT), *argv], env=baseline_env(aps3), cwd=work,
                                stdout=subprocess.DEVNULL, stderr=err, text=True)


def wait_all(procs: dict[str, subprocess.Popen[str]], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    codes: dict[str, int] = {}
    for name, proc in procs.items():
        try:
            codes[name] = proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[name] = proc.wait()
    return codes


def baseline_result(name: str, csvs: list[Path], codes: dict[str, int], work: Path, extra: dict[str, Any],
                    expected_per_schedule: int, services: int) -> dict[str, Any]:
    samples = read_samples(csvs)
    lags = [s.lag for s in samples]
    worst = sorted(samples, key=lambda s: s.lag, reverse=True)[:5]
    errors = {p.stem: tail(p) for p in sorted(work.glob(f"{name}*.log")) if p.read_text().strip()}
    return {
        "name": name,
        **extra,
        "lag": lag_stats(lags),
        "worst": [{"service": s.service, "scheduled_for": s.scheduled_for.isoformat(), "lag_ms": round(s.lag * 1000, 3),
                   "node": s.node} for s in worst],
        "audit": {**audit([(s.service, s.scheduled_for, "succeeded") for s in samples], EVERY),
                  "expected_fire_times": expected_per_schedule * services, "executions": len(samples),
                  "not_run": expected_per_schedule * services - len({(s.service, s.scheduled_for) for s in samples})},
        "executions_per_node": dict(sorted(Counter(s.node for s in samples).items())),
        "exit_codes": codes,
        "stderr": errors,
        "_lags_ms": [round(lag * 1000, 3) for lag in lags],
    }


def run_aps4(python: Path, args: argparse.Namespace, work: Path, offsets: Path) -> dict[str, Any]:
    directory = work / "aps4"
    directory.mkdir()
    with fresh_database("postgresql", directory) as plain:
        url = make_url(plain).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
        start = math.ceil(time.time()) + 12.0  # table creation, schedules and three interpreters start first
        common = ["--url", url, "--services", str(args.services), "--start", str(start),
                  "--seconds", str(args.seconds), "--offsets", str(offsets)]
        init = run_script(python, ["aps4-init", *common], directory, "aps4-init")
        if init.wait(60) != 0:
            raise RuntimeError(f"APScheduler 4 set-up failed: {tail(directory / 'aps4-init.log')}")
        until = start + args.seconds + APS4_DRAIN
        csvs = [directory / f"aps4-{i}.csv" for i in range(args.replicas)]
        procs = {f"aps4-{i}": run_script(python, ["aps4", *common, "--identity", f"aps4-{i}", "--until", str(until),
                                                  "--csv", str(csvs[i])], directory, f"aps4-{i}")
                 for i in range(args.replicas)}
        log(f"aps4: {args.replicas} processes, first fire at {datetime.fromtimestamp(start, UTC):%H:%M:%S}")
        codes = wait_all(procs, until - time.time() + 60)
    return baseline_result("aps4", csvs, codes, directory, {"engine": "postgresql", "processes": args.replicas},
                           int(args.seconds) + 1, args.services)


def run_aps3(python: Path, store: str, args: argparse.Namespace, work: Path, offsets: Path) -> dict[str, Any]:
    name = f"aps3-{store}"
    directory = work / name
    directory.mkdir()
    start = math.ceil(time.time()) + 4.0
    until = start + args.seconds + 2
    csv_path = directory / f"{name}.csv"
    argv = ["aps3", "--store", store, "--services", str(args.services), "--start", str(start),
            "--seconds", str(args.seconds), "--until", str(until), "--offsets", str(offsets), "--identity", name,
            "--csv", str(csv_path)]
    if store == "sqlite":
        argv += ["--url", f"sqlite:///{directory / 'jobs.db'}"]
    log(f"{name}: 1 process, first fire at {datetime.fromtimestamp(start, UTC):%H:%M:%S}")
    codes = wait_all({name: run_script(python, argv, directory, name, aps3=True)}, until - time.time() + 60)
    return baseline_result(name, [csv_path], codes, directory,
                           {"engine": "sqlite" if store == "sqlite" else "memory", "processes": 1},
                           int(args.seconds) + 1, args.services)


# ------------------------------------------------------------------------------------------ report


def build_targets(ours: dict[str, dict[str, Any]], baselines: dict[str, dict[str, Any]]) -> dict[str, bool]:
    targets: dict[str, bool] = {}
    for engine, result in ours.items():
        lag, checked, ran = result.get("lag", {}), result.get("audit", {}), "error" not in result
        targets[f"{engine}: p99 <= {P99_TARGET_MS[engine]:g} ms"] = lag.get("p99_ms", math.inf) <= P99_TARGET_MS[engine]
        targets[f"{engine}: 100 % within {WITHIN_MS:g} ms"] = lag.get("within_50ms_pct", 0) == 100
        targets[f"{engine}: 0 duplicates"] = ran and checked.get("duplicates") == 0
        targets[f"{engine}: 0 missing"] = ran and checked.get("missing") == 0
        targets[f"{engine}: every fire time succeeded"] = ran and checked.get("not_succeeded") == 0
        targets[f"{engine}: replicas exited 0"] = ran and all(code == 0 for code in result["exit_codes"].values())
    if "postgresql" in ours and "aps4" in baselines:
        ratio = ratio_of(baselines["aps4"], ours["postgresql"])
        targets[f"postgresql: APScheduler 4 p99 / ours >= {APS4_RATIO_TARGET:g}"] = (ratio or 0) >= APS4_RATIO_TARGET
    return targets


def ratio_of(baseline: dict[str, Any], ours: dict[str, Any]) -> float | None:
    theirs, mine = baseline.get("lag", {}).get("p99_ms"), ours.get("lag", {}).get("p99_ms")
    if theirs is None or mine is None:
        return None
    return round(float(theirs) / max(float(mine), 0.001), 2)


def ratios(ours: dict[str, dict[str, Any]], baselines: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    pairs = {"aps4": "postgresql", "aps3-sqlite": "sqlite", "aps3-memory": "sqlite"}
    return {f"{name} / ours {engine}": ratio_of(baselines[name], ours[engine])
            for name, engine in pairs.items() if name in baselines and engine in ours}


def plot(python: Path | None, report: dict[str, Any], out: Path, work: Path) -> list[str]:
    if python is None:
        return []
    series: dict[str, dict[str, list[float]]] = {}
    for engine, result in report["ours"].items():
        series.setdefault(engine, {})[LABELS["ours"]] = result.get("_lags_ms", [])
    for name, result in report["baselines"].items():
        if "_lags_ms" in result:
            engine = "sqlite" if name.startswith("aps3") else result["engine"]
            series.setdefault(engine, {})[LABELS[name]] = result["_lags_ms"]
    data = {"title": f"{report['services']} services @every 1s, {report['seconds']:g} s",
            "engines": series, "targets_ms": {e: [P99_TARGET_MS[e], WITHIN_MS] for e in series}}
    path = work / "plot.json"
    path.write_text(json.dumps(data))
    done = subprocess.run([str(python), str(BASELINE_SCRIPT), "plot", "--input", str(path), "--out", str(out)],
                          env=baseline_env(), capture_output=True, text=True)
    if done.returncode != 0:
        log(f"plot failed: {done.stderr.strip()[-500:]}")
        return []
    return [Path(line).name for line in done.stdout.split()]


def fmt(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Replicas: punctuality and exactly-once",
        "",
        f"{report['when']} — {report['services']} services `@every 1s` for {report['seconds']:g} s, "
        f"{report['replicas']} `python -m manager` replicas per engine (SCHEDULER_LOCK_TTL={LOCK_TTL}, "
        f"SCHEDULER_HEARTBEAT_INTERVAL={HEARTBEAT}, LOG_LEVEL=WARNING). Machine: {report['machine']['cores']} cores, "
        f"Python {report['machine']['python']}. Generated by `python -m bench.replicas`; see bench/README.md.",
        "",
        "Lag = start of the run (inside `run_once` / inside the job) minus its scheduled time; figures in ms over "
        "the fire times scheduled while every process was up.",
        "",
        "| scheduler | engine | samples | p50 | p95 | p99 | max | within 50 ms | duplicates | missing "
        "| fire times not run |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = [(LABELS["ours"], engine, result) for engine, result in report["ours"].items()]
    rows += [(LABELS[name], result.get("engine", "-"), result) for name, result in report["baselines"].items()]
    for label, engine, result in rows:
        lag, checked = result.get("lag", {}), result.get("audit", {})
        if "error" in result:
            first = (str(result["error"]).strip().splitlines() or ["?"])[0][:200].replace("|", "/")
            lines.append(f"| {label} | {engine} | failed: {first} (see replicas.json) |")
            continue
        lines.append(
            f"| {label} | {engine} | {fmt(lag.get('samples'))} | {fmt(lag.get('p50_ms'))} | {fmt(lag.get('p95_ms'))} "
            f"| {fmt(lag.get('p99_ms'))} | {fmt(lag.get('max_ms'))} | {fmt(lag.get('within_50ms_pct'))} % "
            f"| {fmt(checked.get('duplicates'))} | {fmt(checked.get('missing'))} "
            f"| {fmt(checked.get('not_run'))} |"
        )
    lines += ["", "Duplicates: extra succeeded runs of one fire time. Missing: fire times between a service's first "
              "and last with no record at all. Fire times not run: ours, fire times between the first and the last "
              "without a succeeded run (missing, skipped, failed); baselines, fire times their triggers produced "
              "in the window that no job ran (coalesced away, or still queued when the processes stopped)."]
    if report["ratios"]:
        lines += ["", "p99 ratios (baseline / ours, same engine):", ""]
        lines += [f"- {name}: {fmt(value)}" for name, value in report["ratios"].items()]
    lines += ["", "## Targets", "", "| target | result |", "| --- | --- |"]
    lines += [f"| {name} | {'PASS' if ok else 'FAIL'} |" for name, ok in report["targets"].items()]
    lines += ["", "## Details", ""]
    for engine, result in report["ours"].items():
        if "error" in result:
            continue
        lines.append(
            f"- ours on {engine}: replicas ready after {result['ready_seconds']} s; run-start lag on the wall clock "
            f"p99 {fmt(result['lag_wall_clock'].get('p99_ms'))} ms; wake-up lag (runs.lag_seconds) p99 "
            f"{fmt(result['wake_up_lag'].get('p99_ms'))} ms; while replicas were still starting: "
            f"{fmt(result['lag_while_replicas_started'].get('samples'))} runs, max "
            f"{fmt(result['lag_while_replicas_started'].get('max_ms'))} ms; succeeded per node "
            f"{result['succeeded_per_node']}; statuses {result['audit']['statuses']}; anchor phase span "
            f"{fmt(result['anchor_phase_span_ms'])} ms; load average {result['load_average']}."
        )
        warnings = {k: v for k, v in result["log_warnings"]["top"].items() if "admin actions" not in k}
        for message, count in warnings.items():
            lines.append(f"  - log, {count}x: `{message}`")
    for name, result in report["baselines"].items():
        if "error" in result:
            continue
        lines.append(f"- {LABELS[name]}: executions per process {result['executions_per_node']}; expected fire times "
                     f"{result['audit']['expected_fire_times']}, executed {result['audit']['executions']}"
                     + (f" (its processes ran {APS4_DRAIN:g} s past the last fire time to work off a backlog)"
                        if name == "aps4" else "") + ".")
    if report.get("baseline_versions"):
        lines.append(f"- baseline versions: {report['baseline_versions']}")
    for image in report.get("plots", []):
        lines += ["", f"![{image}]({image})"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--baselines", default=",".join(BASELINES), help="comma list, or 'none'")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy every process's log into this directory")
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    baselines = [b for b in args.baselines.split(",") if b and b != "none"]
    for name in engines:
        if name not in ENGINES:
            parser.error(f"unknown engine {name!r}; valid: {', '.join(ENGINES)}")
    for name in baselines:
        if name not in BASELINES:
            parser.error(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
    began = time.monotonic()
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
        "services": args.services, "seconds": args.seconds, "replicas": args.replicas,
        "settings": {"SCHEDULER_LOCK_TTL": LOCK_TTL, "SCHEDULER_HEARTBEAT_INTERVAL": HEARTBEAT, "LOG_LEVEL": "WARNING"},
        "ours": {}, "baselines": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        work = Path(tmp)
        python: Path | None = None
        if baselines:
            try:
                python = baseline_python()
                report["baseline_versions"] = baseline_versions(python)
            except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
                log(f"baselines unavailable: {exc}")
                report["baseline_error"] = str(exc)
        for engine in engines:
            report["ours"][engine] = run_ours(engine, args, work)
            log(f"{engine}: lag {report['ours'][engine]['lag']}; audit {report['ours'][engine]['audit']}")
        # The baselines start at the same sub-second phases as our services (PostgreSQL's run when there is one).
        measured = [report["ours"][e]["_phases"] for e in ("postgresql", *engines)
                    if e in report["ours"] and report["ours"][e]["_phases"]]
        phase: list[float] = measured[0] if measured else []
        offsets = work / "offsets.json"
        offsets.write_text(json.dumps(phase or [0.0]))
        if python is not None:
            for name in baselines:
                try:
                    if name == "aps4":
                        result = run_aps4(python, args, work, offsets)
                    else:
                        result = run_aps3(python, name.split("-", 1)[1], args, work, offsets)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    engine = {"aps4": "postgresql", "aps3-memory": "memory", "aps3-sqlite": "sqlite"}[name]
                    result = {"name": name, "engine": engine, "error": str(exc)}
                report["baselines"][name] = result
                log(f"{name}: lag {result.get('lag')}; audit {result.get('audit')}")
        report["ratios"] = ratios(report["ours"], report["baselines"])
        report["targets"] = build_targets(report["ours"], report["baselines"])
        args.out.mkdir(parents=True, exist_ok=True)
        report["plots"] = plot(python, report, args.out, work)
    report["elapsed_seconds"] = round(time.monotonic() - began, 1)
    public = json.loads(json.dumps(report, default=str))
    for section in ("ours", "baselines"):
        for result in public[section].values():
            result.pop("_lags_ms", None)
            result.pop("_phases", None)
    json_path, md_path = args.out / "replicas.json", args.out / "replicas.md"
    json_path.write_text(json.dumps(public, indent=2) + "\n")
    md_path.write_text(markdown(public))
    print(md_path.read_text())
    for name, ok in report["targets"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"written to {json_path} and {md_path} in {report['elapsed_seconds']} s")


if __name__ == "__main__":
    main()
