"""The fleet's status as the database sees it: every service, every replica, every node.

`python -m manager status` and the dashboard both use this. Nothing here asks a running process: the state,
run, lease and node tables hold what every replica on every node has written, so one query pass shows the
whole fleet, including services whose process is gone (their node's heartbeat goes stale).

Three layers, I/O only at the edge:

* `read_snapshot()` reads the four tables and the database clock (one connection, index lookups only);
* `build_status()` turns a snapshot and the configured services into a `FleetStatus` (pure: the clock is the
  snapshot's database time, so a skewed client clock cannot make a live node look dead);
* `render_text()` / `FleetStatus.to_json()` present it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from pydantic import ValidationError
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from manager.config import ServiceSpec
from services.runs import RunRecord, RunStatus, ServiceState
from services.schedule import ScheduleError, parse_schedule
from storage.dbclock import db_utc_now
from storage.schema import leases, nodes, runs, service_state

FAILED_OUTCOMES = (RunStatus.FAILED.value, RunStatus.TIMED_OUT.value, RunStatus.ABANDONED.value)
ACTIVE_STATUSES = ("RUNNING", "PAUSED", "STARTING")  # a service in these must have a live node behind it
DEFAULT_FAILED_RUNS = 10


# --------------------------------------------------------------------------------------------- raw rows


@dataclass(frozen=True)
class LeaseRow:
    scheduler: str
    holder: str | None
    fencing_token: int
    run_id: str | None
    acquired_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True)
class NodeRow:
    node_id: str
    hostname: str
    pid: int
    version: str
    services: list[str]
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None


@dataclass(frozen=True)
class Snapshot:
    """What the database holds, read at `now` (the database's clock)."""

    now: datetime
    states: dict[str, ServiceState]
    leases: dict[str, LeaseRow]
    nodes: list[NodeRow]
    last_runs: dict[str, RunRecord]
    failed_runs: list[RunRecord]


# The newest run of one service: a backward walk of the (scheduler, scheduled_for, attempt) unique index, so it
# costs the same with 10 or 10 million runs in history. (A window function over the table was measured at
# ~300 ms with 300,000 runs on PostgreSQL, growing with the history; this stays at a few ms.)
_LAST_RUN = (
    select(runs)
    .where(runs.c.scheduler == bindparam("p_scheduler"))
    .order_by(runs.c.scheduled_for.desc(), runs.c.attempt.desc())
    .limit(1)
)


async def read_snapshot(
    engine: AsyncEngine, *, services: Sequence[str] = (), failed_runs: int = DEFAULT_FAILED_RUNS
) -> Snapshot:
    """Read the scheduling tables in one connection: the state, lease and node rows, the newest run of each
    service (the named ones and every one with a state row) and the newest failed runs."""
    async with engine.connect() as conn:
        now: datetime = (await conn.execute(select(db_utc_now()))).scalar_one()
        state_rows = (await conn.execute(select(service_state))).mappings().all()
        lease_rows = (await conn.execute(select(leases))).mappings().all()
        node_rows = (await conn.execute(select(nodes).order_by(nodes.c.node_id))).mappings().all()
        last_runs: dict[str, RunRecord] = {}
        for name in sorted(set(services) | {row["scheduler"] for row in state_rows}):
            row = (await conn.execute(_LAST_RUN, {"p_scheduler": name})).mappings().first()
            if row is not None:
                last_runs[name] = RunRecord(**row)
        failed_rows = (
            (
                (
                    await conn.execute(
                        select(runs)
                        .where(runs.c.status.in_(FAILED_OUTCOMES))
                        .order_by(runs.c.scheduled_for.desc(), runs.c.attempt.desc())
                        .limit(failed_runs)
                    )
                )
                .mappings()
                .all()
            )
            if failed_runs
            else []
        )
    return Snapshot(
        now=_aware(now),
        states={r["scheduler"]: ServiceState(**{**r, "overrides": r["overrides"] or {}}) for r in state_rows},
        leases={r["scheduler"]: LeaseRow(**r) for r in lease_rows},
        nodes=[NodeRow(**{**r, "services": list(r["services"] or [])}) for r in node_rows],
        last_runs=last_runs,
        failed_runs=[RunRecord(**r) for r in failed_rows],
    )


def _aware(value: datetime | str) -> datetime:
    """The database clock comes back naive (SQLite returns text); it is UTC everywhere."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    hostname: str
    pid: int
    version: str
    services: list[str]
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    heartbeat_age: float  # seconds, by the database clock
    state: str  # alive | stale | stopped

    def to_json(self) -> dict[str, Any]:
        return {
            "nodeId": self.node_id,
            "hostname": self.hostname,
            "pid": self.pid,
            "version": self.version,
            "services": self.services,
            "startedAt": _iso(self.started_at),
            "heartbeatAt": _iso(self.heartbeat_at),
            "stoppedAt": _iso(self.stopped_at),
            "heartbeatAgeSeconds": round(self.heartbeat_age, 3),
            "state": self.state,
        }


@dataclass(frozen=True)
class ServiceStatusView:
    name: str
    type_name: str | None  # None: in the database but not in this configuration
    enabled: bool
    status: str  # the stored ServiceStatus, or NEW when no node has started it yet
    paused: bool
    schedule: str | None  # human terms, e.g. "daily at 02:00 UTC"
    expression: str | None
    timezone: str | None
    replicas: list[str]  # live nodes that run this service
    lease_holder: str | None
    lease_token: int | None
    lease_expires_at: datetime | None
    current_run_id: str | None
    last_run: RunRecord | None
    consecutive_failures: int
    failure_threshold: int | None
    next_runs: list[datetime]
    problem: str | None  # why it is unhealthy; None when healthy

    @property
    def healthy(self) -> bool:
        return self.problem is None

    def to_json(self, now: datetime) -> dict[str, Any]:
        last = self.last_run
        return {
            "name": self.name,
            "type": self.type_name,
            "configured": self.type_name is not None,
            "enabled": self.enabled,
            "status": self.status,
            "paused": self.paused,
            "healthy": self.healthy,
            "problem": self.problem,
            "schedule": {"expression": self.expression, "timezone": self.timezone, "description": self.schedule},
            "replicas": self.replicas,
            "lease": {
                "holder": self.lease_holder,
                "fencingToken": self.lease_token,
                "expiresAt": _iso(self.lease_expires_at),
                "runId": self.current_run_id,
            },
            "lastRun": None
            if last is None
            else {
                **last.to_json(),
                "when": _iso(_when(last)),
                "ago": humanize_delta(now - _when(last), past=True),
            },
            "consecutiveFailures": self.consecutive_failures,
            "failureThreshold": self.failure_threshold,
            "nextRuns": [{"at": _iso(t), "in": humanize_delta(t - now)} for t in self.next_runs],
        }


@dataclass(frozen=True)
class FleetStatus:
    now: datetime
    services: list[ServiceStatusView]
    nodes: list[NodeStatus]
    failed_runs: list[RunRecord]

    @property
    def healthy(self) -> bool:
        return all(service.healthy for service in self.services)

    def counts(self) -> dict[str, int]:
        statuses = [s.status for s in self.services]
        return {
            "total": len(self.services),
            "running": statuses.count("RUNNING"),
            "paused": sum(1 for s in self.services if s.paused or s.status == "PAUSED"),
            "stopped": statuses.count("STOPPED") + statuses.count("NEW"),
            "errors": statuses.count("ERROR"),
            "unhealthy": sum(1 for s in self.services if not s.healthy),
            "liveNodes": sum(1 for n in self.nodes if n.state == "alive"),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "generatedAt": _iso(self.now),
            "summary": self.counts(),
            "services": [service.to_json(self.now) for service in self.services],
            "nodes": [node.to_json() for node in self.nodes],
            "failedRuns": [run.to_json() for run in self.failed_runs],
        }


def build_status(specs: Sequence[ServiceSpec], snapshot: Snapshot, *, node_ttl: float) -> FleetStatus:
    """The fleet's status from the configured services and what the database holds.

    A node is alive while its heartbeat is younger than `node_ttl` (the lease TTL: a node that has not
    heartbeaten for that long has lost its leases too) and it has not marked itself stopped.

    A service is unhealthy when it is in ERROR, when its failure streak has reached its threshold, or when
    its stored status says it runs (RUNNING, PAUSED, STARTING) but no live node runs it: the process died
    without recording anything. An operator's stop is not an outage.
    """
    now = snapshot.now
    node_views = [_node_view(row, now, node_ttl) for row in snapshot.nodes]
    live = {n.node_id for n in node_views if n.state == "alive"}
    known = {spec.name for spec in specs}
    extra = sorted((set(snapshot.states) | set(snapshot.last_runs)) - known)
    views = [_service_view(spec.name, spec, snapshot, node_views, live) for spec in specs]
    views += [_service_view(name, None, snapshot, node_views, live) for name in extra]
    return FleetStatus(now=now, services=views, nodes=node_views, failed_runs=list(snapshot.failed_runs))


def _node_view(row: NodeRow, now: datetime, node_ttl: float) -> NodeStatus:
    age = max(0.0, (now - row.heartbeat_at).total_seconds())
    state = "stopped" if row.stopped_at is not None else ("alive" if age <= node_ttl else "stale")
    return NodeStatus(
        row.node_id,
        row.hostname,
        row.pid,
        row.version,
        row.services,
        row.started_at,
        row.heartbeat_at,
        row.stopped_at,
        age,
        state,
    )


def _service_view(
    name: str, spec: ServiceSpec | None, snapshot: Snapshot, node_views: list[NodeStatus], live: set[str]
) -> ServiceStatusView:
    now = snapshot.now
    state = snapshot.states.get(name)
    lease = snapshot.leases.get(name)
    holder = lease.holder if lease and lease.holder and lease.expires_at and lease.expires_at > now else None
    replicas = [n.node_id for n in node_views if n.state == "alive" and name in n.services]
    status = state.status if state else "NEW"
    paused = bool(state and state.paused)
    failures = state.consecutive_failures if state else 0
    schedule_text = expression = timezone = None
    threshold: int | None = None
    next_runs: list[datetime] = []
    problem: str | None = None
    if spec is not None:
        config = spec.config
        if state and state.overrides:  # runtime changes made through the admin API win, as on the nodes
            try:
                config = type(config).model_validate({**config.model_dump(), **state.overrides})
            except ValidationError:
                problem = f"stored runtime overrides {state.overrides} are invalid for this version"
        expression, timezone, threshold = config.interval, config.timezone, config.failure_threshold
        try:
            schedule = parse_schedule(config.interval, config.timezone)
        except ScheduleError as exc:  # validated at load; only a stored override could get here
            problem = str(exc)
        else:
            schedule_text = schedule.describe()
            if config.enabled and status in ("RUNNING", "STARTING") and not paused:
                next_runs = next_fire_times(
                    schedule,
                    now=now,
                    anchor=state.anchor_at if state else None,
                    last_fire=state.last_fire_at if state else None,
                )
    last = snapshot.last_runs.get(name)
    if problem is None:
        problem = _problem(status, failures, threshold, replicas, state, last)
    return ServiceStatusView(
        name=name,
        type_name=spec.type_name if spec else None,
        enabled=spec.config.enabled if spec else True,
        status=status,
        paused=paused,
        schedule=schedule_text,
        expression=expression,
        timezone=timezone,
        replicas=replicas,
        lease_holder=holder,
        lease_token=lease.fencing_token if lease else None,
        lease_expires_at=lease.expires_at if holder and lease else None,
        current_run_id=lease.run_id if holder and lease else None,
        last_run=last,
        consecutive_failures=failures,
        failure_threshold=threshold,
        next_runs=next_runs,
        problem=problem,
    )


def _problem(
    status: str,
    failures: int,
    threshold: int | None,
    replicas: list[str],
    state: ServiceState | None,
    last: RunRecord | None,
) -> str | None:
    error = f"; last error: {last.error}" if last is not None and last.error else ""
    if status == "ERROR":
        return f"in ERROR after {failures} consecutive failed runs{error}"
    if threshold is not None and failures >= threshold:
        return f"{failures} consecutive failed runs (threshold {threshold}){error}"
    if status in ACTIVE_STATUSES and not replicas:
        seen = f" (last recorded by {state.node})" if state and state.node else ""
        return f"stored status is {status} but no live node runs it{seen}"
    return None


def next_fire_times(
    schedule: Any, *, now: datetime, anchor: datetime | None, last_fire: datetime | None, count: int = 3
) -> list[datetime]:
    """The next `count` fire times after now, as the nodes compute them (same anchor, never before the newest
    fire time already handled)."""
    after = max(now, last_fire) if last_fire else now
    origin = anchor or now
    times: list[datetime] = []
    for _ in range(count):
        after = schedule.next_fire(after, origin)
        times.append(after)
    return times


# --------------------------------------------------------------------------------------------- wording


def humanize_delta(delta: timedelta, *, past: bool = False) -> str:
    """'in 5h', 'in 3d 2h', 'in 42s', '3m ago'; two units at most, because operators read it at a glance."""
    seconds = int(abs(delta.total_seconds()))
    if seconds < 1:
        return "now"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2 or (parts and seconds == 0):
            break
    text = " ".join(parts[:2])
    future = delta.total_seconds() > 0 and not past
    return f"in {text}" if future else f"{text} ago"


def _when(run: RunRecord) -> datetime:
    return run.finished_at or run.started_at or run.scheduled_for


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return humanize_delta(timedelta(seconds=seconds), past=True).removesuffix(" ago")


class _Style:
    """ANSI colours, only for a terminal (and never when NO_COLOR is set)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def green(self, text: str) -> str:
        return self(text, "32")

    def red(self, text: str) -> str:
        return self(text, "31")

    def yellow(self, text: str) -> str:
        return self(text, "33")

    def dim(self, text: str) -> str:
        return self(text, "2")

    def bold(self, text: str) -> str:
        return self(text, "1")


def use_colour(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")


def render_text(fleet: FleetStatus, *, detailed: bool = False, colour: bool = False) -> str:
    """The operator's view, in the shape of the seed's `health check --detailed`."""
    s = _Style(colour)
    c = fleet.counts()
    mark = s.green("✓") if fleet.healthy else s.red("✗")
    verdict = "healthy" if fleet.healthy else f"{c['unhealthy']} unhealthy"
    lines = [
        f"{mark} {s.bold('scheduler fleet')} {verdict}: {c['total']} services on {c['liveNodes']} live "
        f"node{'s' if c['liveNodes'] != 1 else ''}  {s.dim(fleet.now.strftime('%Y-%m-%d %H:%M:%S UTC'))}",
        f"└─ Services: {c['total']} total, {c['running']} running, {c['paused']} paused, {c['stopped']} stopped, "
        f"{c['errors']} in error",
    ]
    width = max((len(v.name) for v in fleet.services), default=10)
    for view in fleet.services:
        lines.extend(_service_lines(view, fleet.now, width, s))
    if detailed:
        lines.append(f"└─ Nodes ({len(fleet.nodes)}):")
        if not fleet.nodes:
            lines.append("   (no node has registered yet)")
        for i, node in enumerate(fleet.nodes):
            branch = "└─" if i == len(fleet.nodes) - 1 else "├─"
            state = {"alive": s.green, "stale": s.red, "stopped": s.dim}[node.state](node.state)
            beat = humanize_delta(timedelta(seconds=node.heartbeat_age), past=True)
            lines.append(
                f"   {branch} {node.node_id} {state}, heartbeat {beat} · {node.hostname} pid {node.pid} "
                f"v{node.version} · {', '.join(node.services) or 'no services'}"
            )
        lines.append(f"└─ Last failed runs ({len(fleet.failed_runs)}):")
        if not fleet.failed_runs:
            lines.append("   (none)")
        for i, run in enumerate(fleet.failed_runs):
            branch = "└─" if i == len(fleet.failed_runs) - 1 else "├─"
            ago = humanize_delta(fleet.now - _when(run), past=True)
            lines.append(
                f"   {branch} {run.scheduler} {s.red(run.status)} {ago} on {run.node} "
                f"(attempt {run.attempt}): {_one_line(run.error or 'no error recorded')}"
            )
    return "\n".join(lines) + "\n"


def _service_lines(view: ServiceStatusView, now: datetime, width: int, s: _Style) -> list[str]:
    if not view.healthy:
        mark, status = s.red("✗"), s.red(view.status)
    elif view.paused or view.status == "PAUSED":
        mark, status = s.yellow("⏸"), s.yellow("PAUSED" if view.status == "RUNNING" else view.status)
    elif view.status == "RUNNING":
        mark, status = s.green("✓"), s.green(view.status)
    else:
        mark, status = s.dim("·"), s.dim(view.status)
    flags = "" if view.enabled else s.dim(" (disabled)")
    if view.type_name is None:
        flags += s.dim(" (not in this configuration)")
    lease = f"lease {view.lease_holder}" if view.lease_holder else "no lease held"
    out = [
        f"{mark} {view.name.ljust(width)}  {status}{flags} · {lease} · "
        f"nodes: {', '.join(view.replicas) or 'none alive'}"
    ]
    last = view.last_run
    if last is None:
        last_text = "never ran"
    else:
        outcome = last.status
        outcome = (
            s.green(outcome) if outcome == "succeeded" else (s.red(outcome) if outcome in FAILED_OUTCOMES else outcome)
        )
        ago = humanize_delta(now - _when(last), past=True)
        last_text = f"{outcome} {ago}, took {_duration(last.duration_seconds)} on {last.node}"
    plural = "s" if view.consecutive_failures != 1 else ""
    streak = f"{view.consecutive_failures} consecutive failure{plural}"
    out.append(f"   ├─ last run: {last_text} · {streak}")
    if view.problem:
        out.append(f"   ├─ {s.red('problem')}: {_one_line(view.problem)}")
    schedule = view.schedule or "schedule unknown here"
    if view.next_runs:
        upcoming = ", ".join(humanize_delta(t - now) for t in view.next_runs)
    elif view.paused or view.status == "PAUSED":
        upcoming = "paused"
    else:
        upcoming = "not scheduled (" + (view.status.lower() if view.enabled else "disabled") + ")"
    out.append(f"   └─ next: {schedule} → {upcoming}")
    return out


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 200 else line[:197] + "..."
