"""A database outage under a real runner process: it degrades quietly, stays alive and loses nothing.

One `python -m runner --scheduler=probe` talks to the database through a TCP proxy (tests.support.proxy) that
the test cuts for OUTAGE seconds, either with resets (the database went away: errors at once) or as a
blackhole (a partition: statements hang). The database is migrated and the runs table audited through a
direct connection. What the service is expected to do:

* `/readyz` answers 503 once its 2 s cache has expired; `/livez` never touches the database and keeps
  answering 200; the process neither exits nor restarts.
* A fire time during the outage cannot be claimed: the schedule loop logs one error and tries again a second
  later without advancing its cursor. When the database is back, the fire times missed meanwhile are all
  within the misfire grace (5 min), so they are coalesced into ONE run at the newest of them ("coalescing N
  fire times ..."): no burst of catch-up runs, no row for the older ones, no `missed` record.
* The run in flight at the cut ends with an outcome (its own, or `abandoned` by the heartbeat's sweep); no
  row stays `running`, no fire time succeeds twice, no run starts before its fire time.
"""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import pytest
from sqlalchemy.engine import make_url

from storage.migrate import upgrade
from tests.support.processes import Proc, base_env, free_port, poll
from tests.support.proxy import TcpProxy
from tests.support.records import fetch_runs

pytestmark = pytest.mark.slow

TTL, HEARTBEAT = 3, 1  # SCHEDULER_LOCK_TTL, SCHEDULER_HEARTBEAT_INTERVAL (seconds)
EVERY = timedelta(seconds=1)  # PROBE_INTERVAL
OUTAGE = 5.0  # seconds the database stays unreachable: several fire times pass, and the lease TTL
READY_CACHE = 2.0  # manager.http.READY_CACHE_SECONDS
MAX_ERROR_LINES = 50


@dataclass(frozen=True)
class Case:
    mode: Literal["reset", "blackhole"]
    run_time: float  # PROBE_DURATION: the run in flight at the cut ends during the outage, or outlives its lease

    @property
    def label(self) -> str:
        return f"{self.mode}, {self.run_time:g}s runs"


CASES = [
    # The run in flight ends 0.5 s into the outage; its outcome write fails at once.
    pytest.param(Case("reset", 0.5), id="reset"),
    # The outcome write of the run in flight hangs past the lease deadline, until the network comes back.
    pytest.param(Case("blackhole", 0.5), id="blackhole"),
    # The run in flight outlives its lease (4 s > the TTL): the lease guard cancels it mid-outage.
    pytest.param(Case("reset", 4.0), id="reset-long-run"),
]


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite", marks=pytest.mark.skip(
            reason="SQLite is a local file: there is no network connection to cut")),
        pytest.param("postgres", id="postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
    ]
)
def server_url(request: pytest.FixtureRequest) -> str:
    """A fresh, migrated database on a real server (migrated directly, not through the proxy)."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    anyio.run(upgrade, url)
    return url


@pytest.fixture
def proxy(server_url: str) -> Iterator[TcpProxy]:
    target = make_url(server_url)
    assert target.host and target.port
    with TcpProxy(target.host, target.port) as running:
        yield running


@pytest.fixture
def runner(case: Case, server_url: str, proxy: TcpProxy, tmp_path: Path) -> Iterator[Proc]:
    through_proxy = make_url(server_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    env = base_env(
        DATABASE_URL=through_proxy, SCHEDULER_INSTANCE_ID="outage", SCHEDULER_LOCK_TTL=str(TTL),
        SCHEDULER_HEARTBEAT_INTERVAL=str(HEARTBEAT), SCHEDULER_SHUTDOWN_GRACE="10s",
        PROBE_INTERVAL="@every 1s", PROBE_DURATION=f"{int(case.run_time * 1000)}ms", PROBE_MARKER_DIR=str(tmp_path),
    )
    proc = Proc(["runner", "--scheduler=probe"], env, free_port(), tmp_path, "outage")
    yield proc
    proc.close()


def get_status(proc: Proc, path: str, timeout: float) -> int | None:
    """The HTTP status of GET `path`, or None when no answer came within `timeout` seconds."""
    try:
        return proc.http.get(path, timeout=timeout).status_code
    except httpx.TransportError:
        return None


@dataclass
class Outage:
    """What the test saw while the database was away."""

    cut_at: datetime
    restored_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    to_503: float | None = None  # seconds from the cut to the first 503 of /readyz
    readyz: Counter[int | None] = field(default_factory=Counter)  # None: no answer in time
    livez: Counter[int | None] = field(default_factory=Counter)


def run_outage(proc: Proc, proxy: TcpProxy, mode: Literal["reset", "blackhole"]) -> Outage:
    """Cut the database for OUTAGE seconds, probing the process all along; restore it."""
    proxy.cut(mode)
    started = time.monotonic()
    outage = Outage(cut_at=datetime.now(UTC))
    deadline = started + OUTAGE
    for _ in range(int(OUTAGE / 0.1) + 1):  # bounded: each round takes at least 0.1 s
        if time.monotonic() >= deadline:
            break
        round_started = time.monotonic()
        assert proc.popen.poll() is None, f"the runner exited during the outage: {proc.log.read_text()}"
        outage.livez[get_status(proc, "/livez", timeout=2)] += 1
        ready = get_status(proc, "/readyz", timeout=max(0.1, min(2.0, deadline - time.monotonic())))
        outage.readyz[ready] += 1
        if ready == 503 and outage.to_503 is None:
            outage.to_503 = time.monotonic() - started
        time.sleep(max(0.0, 0.1 - (time.monotonic() - round_started)))
    proxy.restore()
    outage.restored_at = datetime.now(UTC)
    return outage


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if re.search(r"Z (ERROR|CRITICAL) ", line)]


def first_succeeded_after(url: str, when: datetime) -> dict[str, Any] | None:
    return min((r for r in fetch_runs(url) if r["status"] == "succeeded" and r["started_at"] >= when),
               key=lambda r: r["started_at"], default=None)


@pytest.mark.parametrize("case", CASES)
def test_database_outage_degrades_quietly_and_loses_nothing(
    case: Case, server_url: str, proxy: TcpProxy, runner: Proc, tmp_path: Path
) -> None:
    runner.wait_ready()
    pid = runner.popen.pid

    # Healthy: ready, and runs are being recorded.
    poll(lambda: sum(r["status"] == "succeeded" for r in fetch_runs(server_url)) >= 2, 20, "two succeeded runs")
    assert get_status(runner, "/readyz", timeout=5) == 200
    before = {r["id"] for r in fetch_runs(server_url)}

    # Cut just after a run started: the database goes away under a run in flight.
    in_flight = poll(lambda: next((p.name for p in tmp_path.iterdir() if len(p.name) == 36 and p.name not in before),
                                  None), 10, "a run to start", interval=0.01)
    outage = run_outage(runner, proxy, case.mode)
    restored = time.monotonic()

    # Degraded but alive: /readyz went 503 within its cache time (plus a probe round), /livez always 200.
    print(f"\n[{case.label}] /readyz during the outage {dict(outage.readyz)}, /livez {dict(outage.livez)}")
    assert outage.to_503 is not None, f"/readyz never answered 503 during a {OUTAGE}s outage: {dict(outage.readyz)}"
    assert outage.to_503 <= READY_CACHE + 1.5, f"/readyz took {outage.to_503:.2f}s to notice the outage"
    assert set(outage.livez) == {200}, f"/livez must answer 200 throughout: {dict(outage.livez)}"

    # Back: the same process is ready again, and runs again within a heartbeat and a couple of seconds.
    poll(lambda: get_status(runner, "/readyz", timeout=2) == 200, READY_CACHE + HEARTBEAT + 5, "/readyz 200 again")
    to_ready = time.monotonic() - restored
    first = poll(lambda: first_succeeded_after(server_url, outage.restored_at), case.run_time + 15,
                 "a succeeded run after the restore")
    assert isinstance(first, dict)
    to_run = (first["started_at"] - outage.restored_at).total_seconds()
    print(f"[{case.label}] 503 {outage.to_503:.2f}s after the cut; after the restore: ready in {to_ready:.2f}s, "
          f"first run started after {to_run:.2f}s (fire time {first['scheduled_for']:%H:%M:%S.%f}, "
          f"attempt {first['attempt']})")
    assert to_run <= HEARTBEAT + 4, f"the first run after the restore started {to_run:.2f}s after it"
    assert runner.popen.poll() is None and runner.popen.pid == pid

    # A few more fire times run, then a clean stop.
    poll(lambda: sum(r["status"] == "succeeded" and r["scheduled_for"] > outage.restored_at
                     for r in fetch_runs(server_url)) >= 2, 2 * case.run_time + 15, "two more runs")
    runner.popen.send_signal(signal.SIGTERM)
    assert runner.wait_exit() == 0, runner.log.read_text()
    log = runner.log.read_text()
    rows = fetch_runs(server_url)

    # Nothing stuck: every row has an outcome, the run in flight at the cut included.
    assert [r for r in rows if r["status"] == "running"] == [], log
    cut_run = next(r for r in rows if r["id"] == in_flight)
    print(f"[{case.label}] the run in flight at the cut ended {cut_run['status']}: {cut_run['error']}")
    assert cut_run["status"] in ("succeeded", "failed", "cancelled", "abandoned"), cut_run

    # No fire time succeeded twice, and no run started before its fire time (the marker has the real time).
    succeeded = Counter(r["scheduled_for"] for r in rows if r["status"] == "succeeded")
    assert [t for t, n in succeeded.items() if n > 1] == [], rows
    for row in rows:
        marker = tmp_path / row["id"]
        if marker.exists():
            started = datetime.fromtimestamp(marker.stat().st_mtime, UTC)
            assert started >= row["scheduled_for"] - timedelta(milliseconds=50), (row, started)
    assert "off the database clock" not in log, "the outage skewed the node's clock estimate"

    # The fire times inside the outage run once, coalesced at the newest of them, when the database is back:
    # no burst of catch-up runs and, within the 5 min misfire grace, no `missed` record. (A fire time whose
    # claim or skip record was already on its way when the network went silent is written when it returns.)
    coalesced = [int(n) for n in re.findall(r"coalescing (\d+) fire times missed within the grace window", log)]
    assert coalesced and max(coalesced) >= OUTAGE - 2, f"expected the outage's fire times coalesced: {coalesced}"
    assert [r for r in rows if r["status"] == "missed"] == []
    fire_times = sorted({r["scheduled_for"] for r in rows if r["trigger"] == "schedule" and r["attempt"] == 1})
    unrecorded = [fire_times[0] + k * EVERY for k in range(round((fire_times[-1] - fire_times[0]) / EVERY) + 1)
                  if fire_times[0] + k * EVERY not in fire_times]
    assert all(outage.cut_at < t < outage.restored_at for t in unrecorded), (
        f"fire times without a record outside the outage: {unrecorded}")
    executed = sorted((r for r in rows if r["scheduled_for"] > outage.cut_at and r["trigger"] == "schedule"
                       and r["status"] not in ("skipped", "missed")), key=lambda r: r["scheduled_for"])
    in_window = [r for r in executed if r["scheduled_for"] < outage.restored_at]
    print(f"[{case.label}] runs of fire times inside the outage: "
          f"{[(r['scheduled_for'].strftime('%S.%f'), r['status'], r['lag_seconds']) for r in in_window]}")
    assert len(in_window) <= 1, in_window
    assert executed and executed[0]["scheduled_for"] >= outage.restored_at - EVERY, executed[:3]

    # Quiet: a bounded number of ERROR lines, no traceback per failed statement.
    errors = error_lines(log)
    print(f"[{case.label}] {len(errors)} ERROR lines, {log.count('Traceback')} tracebacks")
    assert len(errors) < MAX_ERROR_LINES, "\n".join(errors)
    assert log.count("Traceback") <= 2, log
