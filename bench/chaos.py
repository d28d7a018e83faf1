"""Chaos soak: three manager replicas of several services, one replica `kill -9`-ed every 20 s, then an audit.

    python -m bench.chaos [--minutes 10] [--engines postgresql,mysql] [--replicas 3] [--kill-every 20]
                          [--services tick-1s,tick-2s,cron-1s,overlap,flaky,slow] [--seed N] [--restart-delay 0]
                          [--out bench/results]

Per engine a fresh database is created (`tests.db.create_database`, dropped afterwards) and ``--replicas``
`python -m manager` processes are started on it (SCHEDULER_INSTANCE_ID ``chaos-N``, SCHEDULER_LOCK_TTL=5,
SCHEDULER_HEARTBEAT_INTERVAL=1, SCHEDULER_PLUGINS=bench.chaos_services), each running every service of
`DEFAULT_SERVICES` as a `chaos-recorder` instance (bench/chaos_services.py; `EXTRA_SERVICES` are opt-in).
Once all are ready the *kill phase* runs for ``--minutes``: every ``--kill-every`` seconds one replica,
drawn at random, gets SIGKILL and is restarted under the same instance id (at once, or after
``--restart-delay`` seconds). Then a *drain* of `DRAIN` seconds without kills lets the last takeovers and
retries finish, and every replica gets SIGTERM (and must exit 0).

The audit reads the runs table and the services' journals. The audited fire times are those of each
service's schedule (interval: ``anchor + k * every`` from the stored anchor; cron: the expression's
instants) from `START_MARGIN` after all replicas were ready to the end of the kill phase; everything
scheduled after that had the drain to settle. Checks (PASS/FAIL each):

``exactly_one_terminal``
    Each audited fire time has exactly one *terminal record*. A fire time's records are its rows
    ``(scheduler, scheduled_for, attempt = 1..n)``. Its terminal record is the row of its last attempt ``n``,
    and that row's status must be one of `RunStatus` other than ``running`` (`services.runs.TERMINAL`):
    ``succeeded``; ``failed`` / ``timed_out`` (the last retry failed); ``skipped`` (attempt 1 only: the
    previous run still held the service's lease); ``missed`` (attempt 1 only; one ``missed`` row stands for
    the N stale fire times its error names, ending at its own); ``abandoned`` (its node died and no retry
    followed); ``cancelled``. Every earlier attempt must be a retriable non-success, ``failed`` / ``timed_out``
    / ``abandoned``, which is what "abandoned, then retried" looks like. It fails on: a fire time without any
    row (and not covered by a ``missed`` row), attempts not numbered 1..n, a second success, an attempt
    after a success or after a non-retriable outcome, a row still ``running``, a row whose scheduled time
    is not on the schedule.
``retries_honoured``
    No fire time ends ``failed`` / ``timed_out`` / ``abandoned`` while retries were left (attempt
    ≤ max_retries): a kill must not eat the retries a fire time is owed (the design: takeover "marks the run
    abandoned and retries it as the next attempt if retries remain").
``no_overlap`` (journal) and ``no_overlap_rows`` (runs table)
    No two runs of one service executed at the same time. The journal's intervals are each run's real
    ``run_once`` start and end (wall clock, shared by all processes; a killed run ends at its kill), compared
    with zero tolerance. The rows' intervals are ``started_at`` to ``finished_at`` (an ``abandoned`` row ends
    at the kill of its node if that came first), with `ROW_TOLERANCE`, because ``started_at`` is taken when
    the claim is built, a moment before the claim's transaction takes the lease. Overlaps where one of the
    two runs belongs to a killed process or is ``abandoned`` are counted as ``during_takeover``; the check
    fails on the others.
``fencing``
    The fencing tokens of a service's writes never go backwards: in wall-clock order of the journal's lines
    (every run's start and its effect write, both carrying ``ctx.fencing_token``), no token is lower than one
    already seen for that service; in ``started_at`` order of the rows, the tokens the outcome writes stored
    never decrease; and a row's stored token equals the token its run saw.
``none_running``
    After the fleet stopped, no row of the run (audited or not) is still ``running``.

Results are merged per engine into bench/results/chaos.json and rendered to bench/results/chaos.md. The
short version of this soak (60 s, PostgreSQL) is tests/chaos/test_chaos_short.py.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import csv
import itertools
import json
import random
import re
import signal
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import select

from bench.core import machine
from bench.replicas import fresh_database, load_average, log, log_summary
from services.runs import TERMINAL, RunStatus
from services.schedule import Schedule, parse_schedule
from storage.engine import create_engine
from storage.migrate import upgrade
from storage.schema import runs, service_state
from tests.support.processes import Proc, base_env, free_port

ROOT = Path(__file__).resolve().parents[1]
LOCK_TTL, HEARTBEAT = 5.0, 1.0
DRAIN = 15.0  # seconds without kills before the stop: TTL + heartbeat + the slowest retry chain, with room
START_MARGIN = timedelta(seconds=1)
ROW_TOLERANCE = timedelta(milliseconds=100)
PREFIX = "chaos-"
EXAMPLES = 8  # evidence rows kept per failed check


@dataclass(frozen=True)
class ServiceSpec:
    interval: str
    duration_ms: int = 0
    fail_rate: float = 0.0
    max_retries: int = 2
    retry_delay_ms: int = 200
    why: str = ""


SERVICES: dict[str, ServiceSpec] = {
    "tick-1s": ServiceSpec("@every 1s", why="the plain case, one fire a second"),
    "tick-2s": ServiceSpec("@every 2s", 200, why="a slower interval with short runs"),
    "cron-1s": ServiceSpec("*/1 * * * * *", 50, why="a 6-field cron with a seconds field"),
    "overlap": ServiceSpec("@every 1s", 2500, why="runs longer than the interval: the fires in between are skipped"),
    "flaky": ServiceSpec("@every 2s", 100, 0.3, why="30 % of attempts fail: retries (2, 200 ms apart)"),
    "slow": ServiceSpec("@every 5s", 3000, why="in flight 60 % of the time: kills hit it mid-run, takeovers retry"),
}
# Not in the default set (opt in with --services): a service that spends most of its time waiting out a
# retry back-off, so that kills land between attempts.
EXTRA_SERVICES: dict[str, ServiceSpec] = {
    "backoff": ServiceSpec(
        "@every 5s",
        100,
        0.8,
        retry_delay_ms=3000,
        why="80 % of attempts fail, 3 s between attempts: kills land in the back-off",
    ),
}
DEFAULT_SERVICES = list(SERVICES)
SERVICES.update(EXTRA_SERVICES)
RETRIABLE = frozenset({RunStatus.FAILED.value, RunStatus.TIMED_OUT.value, RunStatus.ABANDONED.value})
TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)
NOT_EXECUTED = frozenset({RunStatus.SKIPPED.value, RunStatus.MISSED.value})
_MISSED_COUNT = re.compile(r"^(\d+) fire time")


@dataclass
class SoakOptions:
    seconds: float = 600.0  # the kill phase
    replicas: int = 3
    kill_every: float = 20.0
    services: list[str] = field(default_factory=lambda: list(DEFAULT_SERVICES))
    seed: int | None = None
    drain: float = DRAIN
    restart_delay: float = 0.0  # seconds between a kill and the restart (0: at once, as a supervisor would)


@dataclass(frozen=True)
class Kill:
    node: str
    pid: int
    at: datetime
    restart_ready_s: float | None


# ------------------------------------------------------------------------------------------ the fleet


def write_config(path: Path, services: list[str], journal: Path, other_types: Iterable[str]) -> None:
    """The replicas' YAML: every other registered type disabled, one chaos-recorder instance per service."""
    lines = ["services:"]
    for name in sorted(other_types):
        lines += [f"  {name}:", "    enabled: false"]
    for name in services:
        spec = SERVICES[name]
        lines += [
            f"  {PREFIX}{name}:",
            "    type: chaos-recorder",
            f"    interval: '{spec.interval}'",
            f"    duration: {spec.duration_ms}",
            f"    fail_rate: {spec.fail_rate}",
            f"    max_retries: {spec.max_retries}",
            f"    retry_delay: {spec.retry_delay_ms}",
            f"    log_dir: '{journal}'",
        ]
    path.write_text("\n".join(lines) + "\n")


class Fleet:
    """`python -m manager` replicas on one database; any can be killed and restarted under its instance id."""

    def __init__(self, url: str, config: Path, directory: Path) -> None:
        self.url = url
        self.config = config
        self.directory = directory
        self.procs: dict[str, Proc] = {}
        self.retired: list[Proc] = []
        self.incarnations: Counter[str] = Counter()

    def start(self, node: str) -> Proc:
        env = base_env(
            DATABASE_URL=self.url,
            SCHEDULER_INSTANCE_ID=node,
            SCHEDULER_LOCK_TTL=f"{LOCK_TTL:g}",
            SCHEDULER_HEARTBEAT_INTERVAL=f"{HEARTBEAT:g}",
            SCHEDULER_PLUGINS="bench.chaos_services",
            SCHEDULER_SHUTDOWN_GRACE="10s",
            LOG_LEVEL="WARNING",
        )
        proc = Proc(
            ["manager", "--config", str(self.config)],
            env,
            free_port(),
            self.directory,
            f"{node}-{self.incarnations[node]}",
        )
        self.incarnations[node] += 1
        self.procs[node] = proc
        return proc

    def kill(self, node: str) -> tuple[int, datetime]:
        proc = self.procs.pop(node)
        proc.popen.send_signal(signal.SIGKILL)
        killed_at = datetime.now(UTC)
        proc.popen.wait(30)
        self.retired.append(proc)
        return proc.popen.pid, killed_at

    def stop(self) -> dict[str, int | str]:
        for proc in self.procs.values():
            proc.popen.send_signal(signal.SIGTERM)
        codes: dict[str, int | str] = {}
        for node, proc in self.procs.items():
            try:
                codes[node] = proc.wait_exit(60)
            except AssertionError:
                codes[node] = "still running 60 s after SIGTERM: killed"
        return codes

    def logs(self) -> list[Path]:
        return [p.log for p in [*self.retired, *self.procs.values()]]

    def close(self) -> None:
        for proc in [*self.procs.values(), *self.retired]:
            proc.close()


def other_service_types() -> list[str]:
    """The built-in types: each gets a default instance in the replicas, which the soak disables.

    Only built-ins: this process may have registered benchmark types (bench.services) that the replicas,
    whose only plugin is bench.chaos_services, do not know.
    """
    from services.registry import BUILTIN_MODULES, service_types

    return [name for name, cls in service_types().items() if cls.__module__ in BUILTIN_MODULES]


def soak(url: str, engine: str, options: SoakOptions, work: Path) -> dict[str, Any]:
    """Run the soak on a migrated, empty database at `url` and return its audited result."""
    unknown = [s for s in options.services if s not in SERVICES]
    if unknown:
        raise ValueError(f"unknown chaos service(s) {', '.join(unknown)}; known: {', '.join(SERVICES)}")
    directory = work / engine
    directory.mkdir(parents=True)
    journal = directory / "journal"
    journal.mkdir()
    config = directory / "chaos.yaml"
    write_config(config, options.services, journal, other_service_types())
    dice = random.Random(options.seed)
    fleet = Fleet(url, config, directory)
    kills: list[Kill] = []
    began = time.monotonic()
    load_before = load_average()
    nodes = [f"chaos-{i}" for i in range(options.replicas)]
    error: str | None = None
    exit_codes: dict[str, int | str] = {}
    fleet_started = datetime.now(UTC)
    ready_at = kill_phase_end = stopped_at = fleet_started
    try:
        for node in nodes:
            fleet.start(node)
        for node in nodes:
            fleet.procs[node].wait_ready(120)
        ready_at = datetime.now(UTC)
        log(
            f"{engine}: {len(nodes)} replicas ready after {(ready_at - fleet_started).total_seconds():.1f}s; "
            f"kill phase {options.seconds:g}s, one kill -9 every {options.kill_every:g}s"
        )
        phase_start = time.monotonic()
        next_kill = phase_start + options.kill_every
        while next_kill <= phase_start + options.seconds:
            time.sleep(max(0.0, next_kill - time.monotonic()))
            victim = dice.choice(nodes)
            pid, killed_at = fleet.kill(victim)
            time.sleep(options.restart_delay)
            restarted = time.monotonic()
            fleet.start(victim).wait_ready(120)
            ready_s = round(time.monotonic() - restarted, 2)
            kills.append(Kill(victim, pid, killed_at, ready_s))
            log(f"{engine}: kill {len(kills)}: {victim} (pid {pid}); restarted, ready after {ready_s}s")
            next_kill += options.kill_every
        time.sleep(max(0.0, phase_start + options.seconds - time.monotonic()))
        kill_phase_end = datetime.now(UTC)
        time.sleep(options.drain)
    except (AssertionError, OSError) as exc:  # a replica that never got ready: reported, not raised
        error = str(exc)[:4000]
        log(f"{engine}: {error[:500]}")
        kill_phase_end = datetime.now(UTC)
    finally:
        stopped_at = datetime.now(UTC)
        exit_codes = fleet.stop()
        fleet.close()
    rows, anchors = anyio.run(read_rows, url)
    events = read_journal(journal)
    specs = {f"{PREFIX}{name}": SERVICES[name] for name in options.services}
    lo, hi = ready_at + START_MARGIN, kill_phase_end
    checked = audit(rows, anchors, events, specs, kills, window=(lo, hi), span=(fleet_started, stopped_at))
    return {
        "engine": engine,
        "kill_phase_s": options.seconds,
        "replicas": options.replicas,
        "kill_every_s": options.kill_every,
        "lock_ttl_s": LOCK_TTL,
        "heartbeat_s": HEARTBEAT,
        "drain_s": options.drain,
        "restart_delay_s": options.restart_delay,
        "seed": options.seed,
        "services": {
            name: {
                "interval": s.interval,
                "duration_ms": s.duration_ms,
                "fail_rate": s.fail_rate,
                "max_retries": s.max_retries,
            }
            for name, s in specs.items()
        },
        "window": {
            "fleet_started": fleet_started.isoformat(),
            "ready": ready_at.isoformat(),
            "audited_from": lo.isoformat(),
            "audited_to": hi.isoformat(),
            "stopped": stopped_at.isoformat(),
        },
        "kills": [
            {"node": k.node, "pid": k.pid, "at": k.at.isoformat(), "restart_ready_s": k.restart_ready_s} for k in kills
        ],
        **checked,
        "error": error,
        "exit_codes": exit_codes,
        "log_warnings": log_summary(fleet.logs()),
        "load_average": {"before": load_before, "after": load_average()},
        "elapsed_s": round(time.monotonic() - began, 1),
    }


async def read_rows(url: str) -> tuple[list[dict[str, Any]], dict[str, datetime]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            found = (await conn.execute(select(runs).where(runs.c.scheduler.like(f"{PREFIX}%")))).mappings()
            rows = [dict(r) for r in found]
            anchors = {
                r.scheduler: r.anchor_at
                for r in await conn.execute(
                    select(service_state.c.scheduler, service_state.c.anchor_at).where(
                        service_state.c.scheduler.like(f"{PREFIX}%")
                    )
                )
                if r.anchor_at is not None
            }
    finally:
        await engine.dispose()
    return rows, anchors


def read_journal(directory: Path) -> list[dict[str, Any]]:
    """Every journal line of every process; a torn last line of a killed process is dropped."""
    from bench.chaos_services import FIELDS

    events: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.csv")):
        with path.open(newline="") as handle:
            for line in csv.reader(handle):
                if len(line) != len(FIELDS):
                    continue
                event: dict[str, Any] = dict(zip(FIELDS, line, strict=True))
                event["at"] = datetime.fromisoformat(event["at"])
                event["scheduled_for"] = datetime.fromisoformat(event["scheduled_for"])
                event["attempt"] = int(event["attempt"])
                event["token"] = int(event["token"]) if event["token"] else None
                event["pid"] = int(event["pid"])
                events.append(event)
    return events


# ------------------------------------------------------------------------------------------ the audit (pure)


def fire_times(schedule: Schedule, anchor: datetime, after: datetime, until: datetime) -> list[datetime]:
    """The schedule's fire times t with after < t <= until."""
    times: list[datetime] = []
    t = schedule.next_fire(after, anchor)
    while t <= until:
        times.append(t)
        t = schedule.next_fire(t, anchor)
    return times


def classify(rows: list[dict[str, Any]], max_retries: int) -> tuple[str, list[str]]:
    """A fire time's outcome from its rows (any order), and what is wrong with them (empty: nothing).

    The outcome is the last attempt's status, refined: ``failed``/``timed_out``/``abandoned`` with retries
    left become ``retry lost: <status>``.
    """
    ordered = sorted(rows, key=lambda r: r["attempt"])
    problems: list[str] = []
    attempts = [r["attempt"] for r in ordered]
    if attempts != list(range(1, len(ordered) + 1)):
        problems.append(f"attempts {attempts} are not 1..{len(ordered)}")
    statuses = [r["status"] for r in ordered]
    if statuses.count(RunStatus.SUCCEEDED.value) > 1:
        problems.append(f"{statuses.count(RunStatus.SUCCEEDED.value)} successes")
    for earlier, later in itertools.pairwise(ordered):
        if earlier["status"] not in RETRIABLE:
            problems.append(f"attempt {later['attempt']} after attempt {earlier['attempt']} {earlier['status']}")
    if RunStatus.RUNNING.value in statuses:
        problems.append("still running")
    last = ordered[-1]
    status = last["status"]
    if status in (RunStatus.SKIPPED.value, RunStatus.MISSED.value) and last["attempt"] != 1:
        problems.append(f"{status} at attempt {last['attempt']}")
    if status not in TERMINAL_VALUES:
        return status, problems
    if status in RETRIABLE and last["attempt"] <= max_retries:
        return f"retry lost: {status}", problems
    return status, problems


def missed_cover(rows: list[dict[str, Any]], times: list[datetime]) -> set[datetime]:
    """The fire times that `missed` rows stand for: the N (from the error text) ending at each row's own."""
    covered: set[datetime] = set()
    for row in rows:
        if row["status"] != RunStatus.MISSED.value:
            continue
        match = _MISSED_COUNT.match(row["error"] or "")
        count = int(match.group(1)) if match else 1
        end = bisect.bisect_right(times, row["scheduled_for"])
        covered.update(times[max(0, end - count) : end])
    return covered


def first_kill_after(kills: list[Kill], node: str, moment: datetime) -> datetime | None:
    return next((k.at for k in sorted(kills, key=lambda k: k.at) if k.node == node and k.at >= moment), None)


def overlaps(
    intervals: list[tuple[datetime, datetime, dict[str, Any]]], tolerance: timedelta = timedelta(0)
) -> list[tuple[dict[str, Any], dict[str, Any], float]]:
    """Pairs of intervals (start, end, what) that overlap by more than `tolerance`, with the overlap in s."""
    found: list[tuple[dict[str, Any], dict[str, Any], float]] = []
    ordered = sorted(intervals, key=lambda i: i[0])
    latest: tuple[datetime, datetime, dict[str, Any]] | None = None
    for interval in ordered:
        if latest is not None and interval[0] < latest[1] - tolerance:
            found.append(
                (latest[2], interval[2], round((min(latest[1], interval[1]) - interval[0]).total_seconds(), 3))
            )
        if latest is None or interval[1] > latest[1]:
            latest = interval
    return found


def _row_brief(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v.isoformat() if isinstance(v, datetime) else v)
        for k, v in row.items()
        if k
        in (
            "id",
            "scheduler",
            "scheduled_for",
            "attempt",
            "trigger",
            "status",
            "node",
            "started_at",
            "finished_at",
            "fencing_token",
            "error",
            "service",
            "run_id",
            "token",
            "at",
            "kind",
            "pid",
            "outcome",
        )
    }


def _check(problems: list[Any], **extra: Any) -> dict[str, Any]:
    return {"ok": not problems, "count": len(problems), "examples": problems[:EXAMPLES], **extra}


def audit(
    rows: list[dict[str, Any]],
    anchors: dict[str, datetime],
    events: list[dict[str, Any]],
    specs: dict[str, ServiceSpec],
    kills: list[Kill],
    *,
    window: tuple[datetime, datetime],
    span: tuple[datetime, datetime],
) -> dict[str, Any]:
    """All checks of the module docstring over one soak's rows, journal and kills (no I/O)."""
    lo, hi = window
    by_service: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_service[row["scheduler"]].append(row)
    terminal: list[Any] = []
    retries: list[Any] = []
    outcomes: dict[str, Counter[str]] = {}
    expected_total = 0
    for service, spec in specs.items():
        service_rows = [r for r in by_service.get(service, []) if r["trigger"] != "manual"]
        schedule = parse_schedule(spec.interval)
        anchor = anchors.get(service, span[0])
        every = fire_times(schedule, anchor, span[0] - timedelta(seconds=1), span[1])
        on_schedule = set(every)
        for row in service_rows:
            if row["scheduled_for"] not in on_schedule:
                terminal.append({"problem": "scheduled time not on the schedule", **_row_brief(row)})
        per_time: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
        for row in service_rows:
            per_time[row["scheduled_for"]].append(row)
        covered = missed_cover(service_rows, every)
        counts: Counter[str] = Counter()
        audited = [t for t in every if lo <= t <= hi]
        expected_total += len(audited)
        for t in audited:
            group = per_time.get(t)
            if not group:
                if t in covered:
                    counts["missed (covered by a missed row)"] += 1
                    continue
                counts["MISSING"] += 1
                terminal.append({"problem": "no record", "scheduler": service, "scheduled_for": t.isoformat()})
                continue
            outcome, problems = classify(group, spec.max_retries)
            counts[outcome] += 1
            if problems:
                terminal.append(
                    {
                        "problem": "; ".join(problems),
                        "scheduler": service,
                        "scheduled_for": t.isoformat(),
                        "rows": [_row_brief(r) for r in sorted(group, key=lambda r: r["attempt"])],
                    }
                )
            if outcome.startswith("retry lost"):
                retries.append(
                    {
                        "scheduler": service,
                        "scheduled_for": t.isoformat(),
                        "max_retries": spec.max_retries,
                        "rows": [_row_brief(r) for r in sorted(group, key=lambda r: r["attempt"])],
                    }
                )
        outcomes[service] = counts
    killed = {(k.node, k.pid): k.at for k in kills}
    journal_overlap, journal_takeover = _journal_overlaps(events, rows, killed, span[1])
    row_overlap, row_takeover = _row_overlaps(rows, kills)
    fencing = _fencing(events, rows)
    running = [_row_brief(r) for r in rows if r["status"] == RunStatus.RUNNING.value]
    ended = {e["run_id"] for e in events if e["kind"] == "end"}
    total: Counter[str] = Counter()
    for counts in outcomes.values():
        total.update(counts)
    return {
        "fire_times_audited": expected_total,
        "outcomes": dict(sorted(total.items())),
        "outcomes_per_service": {s: dict(sorted(c.items())) for s, c in outcomes.items()},
        "rows_by_status": dict(sorted(Counter(r["status"] for r in rows).items())),
        "rows_by_attempt": dict(sorted(Counter(str(r["attempt"]) for r in rows).items())),
        "journal": {
            "starts": sum(1 for e in events if e["kind"] == "start"),
            "effect_writes": sum(1 for e in events if e["kind"] == "end"),
            "starts_without_end_in_killed_processes": sum(
                1
                for e in events
                if e["kind"] == "start" and (e["node"], e["pid"]) in killed and e["run_id"] not in ended
            ),
        },
        "checks": {
            "exactly_one_terminal": _check(terminal),
            "retries_honoured": _check(retries),
            "no_overlap": _check(
                journal_overlap,
                during_takeover=len(journal_takeover),
                during_takeover_examples=journal_takeover[:EXAMPLES],
            ),
            "no_overlap_rows": _check(
                row_overlap, during_takeover=len(row_takeover), tolerance_s=ROW_TOLERANCE.total_seconds()
            ),
            "fencing": _check(fencing),
            "none_running": _check(running),
        },
    }


def _journal_overlaps(
    events: list[dict[str, Any]], rows: list[dict[str, Any]], killed: dict[tuple[str, int], datetime], stopped: datetime
) -> tuple[list[Any], list[Any]]:
    ends = {e["run_id"]: e["at"] for e in events if e["kind"] == "end"}
    finished = {r["id"]: r for r in rows}
    per_service: dict[str, list[tuple[datetime, datetime, dict[str, Any]]]] = defaultdict(list)
    for e in events:
        if e["kind"] != "start":
            continue
        kill = killed.get((e["node"], e["pid"]))
        row = finished.get(e["run_id"])
        end = ends.get(e["run_id"])
        if end is None:  # killed, or no effect write (failed ownership): the kill or the recorded finish
            candidates = [t for t in (kill, row["finished_at"] if row else None) if t is not None]
            end = min(candidates) if candidates else stopped
        what = {**_row_brief(e), "killed_process": kill is not None, "row_status": row["status"] if row else None}
        per_service[e["service"]].append((e["at"], end, what))
    bad: list[Any] = []
    takeover: list[Any] = []
    for pairs in (overlaps(v) for v in per_service.values()):
        for a, b, seconds in pairs:
            item = {"first": a, "second": b, "overlap_s": seconds}
            during = a["killed_process"] or b["killed_process"] or "abandoned" in (a["row_status"], b["row_status"])
            (takeover if during else bad).append(item)
    return bad, takeover


def _row_overlaps(rows: list[dict[str, Any]], kills: list[Kill]) -> tuple[list[Any], list[Any]]:
    per_service: dict[str, list[tuple[datetime, datetime, dict[str, Any]]]] = defaultdict(list)
    for row in rows:
        if row["started_at"] is None or row["status"] in NOT_EXECUTED or row["finished_at"] is None:
            continue
        end = row["finished_at"]
        if row["status"] == RunStatus.ABANDONED.value:
            kill = first_kill_after(kills, row["node"], row["started_at"])
            end = min(end, kill) if kill else end
        per_service[row["scheduler"]].append((row["started_at"], end, _row_brief(row)))
    bad: list[Any] = []
    takeover: list[Any] = []
    for pairs in (overlaps(v, ROW_TOLERANCE) for v in per_service.values()):
        for a, b, seconds in pairs:
            item = {"first": a, "second": b, "overlap_s": seconds}
            (takeover if RunStatus.ABANDONED.value in (a["status"], b["status"]) else bad).append(item)
    return bad, takeover


def _fencing(events: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[Any]:
    problems: list[Any] = []
    per_service: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e["token"] is not None:
            per_service[e["service"]].append(e)
    for service, lines in per_service.items():
        highest: dict[str, Any] | None = None
        for e in sorted(lines, key=lambda x: x["at"]):
            if highest is not None and e["token"] < highest["token"]:
                problems.append(
                    {
                        "problem": "journal write with an older token",
                        "service": service,
                        "write": _row_brief(e),
                        "after": _row_brief(highest),
                    }
                )
            if highest is None or e["token"] > highest["token"]:
                highest = e
    per_scheduler: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["fencing_token"] is not None and row["started_at"] is not None:
            per_scheduler[row["scheduler"]].append(row)
    for service, fenced in per_scheduler.items():
        top: dict[str, Any] | None = None
        for row in sorted(fenced, key=lambda r: r["started_at"]):
            if top is not None and row["fencing_token"] < top["fencing_token"]:
                problems.append(
                    {
                        "problem": "row token lower than an earlier run's",
                        "service": service,
                        "row": _row_brief(row),
                        "after": _row_brief(top),
                    }
                )
            if top is None or row["fencing_token"] > top["fencing_token"]:
                top = row
    seen = {e["run_id"]: e["token"] for e in events if e["kind"] == "start"}
    for row in rows:
        token = seen.get(row["id"])
        if row["fencing_token"] is not None and token is not None and token != row["fencing_token"]:
            problems.append(
                {"problem": "stored token differs from the run's", "run_token": token, "row": _row_brief(row)}
            )
    return problems


# ------------------------------------------------------------------------------------------ report


def passed(result: dict[str, Any]) -> bool:
    return result.get("error") is None and all(c["ok"] for c in result["checks"].values())


def markdown(report: dict[str, Any]) -> str:
    engines = report["engines"]
    lines = [
        "# Chaos soak: kill -9 of a random replica, restarted, then an audit of the database",
        "",
        "Three `python -m manager` replicas of the `chaos-recorder` services below (bench/chaos_services.py), "
        f"SCHEDULER_LOCK_TTL={LOCK_TTL:g}s, SCHEDULER_HEARTBEAT_INTERVAL={HEARTBEAT:g}s; one replica drawn at "
        "random gets SIGKILL every `kill_every` seconds and is restarted after `restart delay` (0: at once); a drain "
        "without kills, then "
        "SIGTERM. The checks and the meaning of *terminal* are defined in the docstring of `bench/chaos.py` "
        "and in bench/README.md. Generated by `python -m bench.chaos`.",
        "",
        "| engine | kill phase | kill every | restart delay | kills | fire times audited | outcome of the fire times "
        "| overall | when |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for name, r in sorted(engines.items()):
        outcome = ", ".join(f"{k} {v}" for k, v in r["outcomes"].items())
        lines.append(
            f"| {name} | {r['kill_phase_s']:g} s | {r['kill_every_s']:g} s | {r.get('restart_delay_s', 0):g} s "
            f"| {len(r['kills'])} | {r['fire_times_audited']} | {outcome} "
            f"| {'PASS' if passed(r) else 'FAIL'} | {r.get('when', '')} |"
        )
    lines += [
        "",
        "## Checks",
        "",
        "| engine | check | result | violations | note |",
        "| --- | --- | --- | ---: | --- |",
    ]
    for name, r in sorted(engines.items()):
        for check, c in r["checks"].items():
            note = f"{c['during_takeover']} during a takeover (allowed)" if "during_takeover" in c else ""
            lines.append(f"| {name} | {check} | {'PASS' if c['ok'] else 'FAIL'} | {c['count']} | {note} |")
    lines += [
        "",
        "## Per service",
        "",
        "| engine | service | schedule | run | fail rate | retries | outcomes |",
        "| --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name, r in sorted(engines.items()):
        for service, spec in r["services"].items():
            counts = ", ".join(f"{k} {v}" for k, v in r["outcomes_per_service"].get(service, {}).items())
            lines.append(
                f"| {name} | {service} | `{spec['interval']}` | {spec['duration_ms']} ms | "
                f"{spec['fail_rate']:g} | {spec['max_retries']} | {counts} |"
            )
    lines += ["", "## Details", ""]
    for name, r in sorted(engines.items()):
        ready = [k["restart_ready_s"] for k in r["kills"] if k["restart_ready_s"] is not None]
        lines.append(
            f"- {name}: rows by status {r['rows_by_status']}; by attempt {r['rows_by_attempt']}; journal "
            f"{r['journal']}; restart to ready {min(ready, default=0):g}-{max(ready, default=0):g} s; "
            f"exit codes {r['exit_codes']}; load average {r['load_average']}; {r['elapsed_s']} s wall time; "
            f"victims {dict(Counter(k['node'] for k in r['kills']))}." + (f" Error: {r['error']}" if r["error"] else "")
        )
        for check, c in r["checks"].items():
            if c["examples"]:
                lines.append(
                    f"  - {check} evidence (first {len(c['examples'])}): "
                    f"`{json.dumps(c['examples'][:3], default=str)[:1500]}`"
                )
        top = r["log_warnings"]["top"]
        if top:
            lines.append(
                f"  - replicas' WARNING/ERROR lines ({r['log_warnings']['lines']}), most frequent: "
                + "; ".join(f"{v} x `{k[:140]}`" for k, v in list(top.items())[:4])
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the kill phase per engine")
    parser.add_argument("--engines", default="postgresql,mysql")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=20.0, help="seconds between kills")
    parser.add_argument("--services", default=",".join(DEFAULT_SERVICES), help=f"comma list of {', '.join(SERVICES)}")
    parser.add_argument("--seed", type=int, default=None, help="seed of the victim draw")
    parser.add_argument("--restart-delay", type=float, default=0.0, help="seconds from a kill to the restart")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    for engine in engines:
        if engine not in ("postgresql", "mysql"):
            parser.error(f"--engines: {engine!r} is not postgresql or mysql")
    services = [s for s in args.services.split(",") if s]
    unknown = [s for s in services if s not in SERVICES]
    if unknown:
        parser.error(f"--services: unknown {', '.join(unknown)}; known: {', '.join(SERVICES)}")
    options = SoakOptions(
        seconds=args.minutes * 60,
        replicas=args.replicas,
        kill_every=args.kill_every,
        services=services,
        seed=args.seed,
        restart_delay=args.restart_delay,
    )
    path = args.out / "chaos.json"
    report: dict[str, Any] = {"engines": {}}
    if path.exists():
        with contextlib.suppress(ValueError):
            report = json.loads(path.read_text())
    report["machine"] = machine()
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        for engine in engines:
            with fresh_database(engine, Path(tmp)) as url:
                anyio.run(upgrade, url)
                result = soak(url, engine, options, Path(tmp))
            result["when"] = datetime.now(UTC).isoformat(timespec="seconds")
            report["engines"][engine] = result
            log(
                f"{engine}: {'PASS' if passed(result) else 'FAIL'} "
                + ", ".join(f"{k} {'ok' if c['ok'] else c['count']}" for k, c in result["checks"].items())
            )
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = args.out / "chaos.md"
    md.write_text(markdown(report))
    print(md.read_text())
    print(f"written to {path} and {md}")
    if not all(passed(r) for name, r in report["engines"].items() if name in engines):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
