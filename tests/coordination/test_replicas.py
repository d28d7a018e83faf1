"""Several real runner processes on one database: exactly-once fires, kill -9 takeover, skew, graceful stop.

Each test runs on SQLite (processes sharing one file), PostgreSQL and MariaDB.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from storage.migrate import upgrade
from tests.support.processes import Proc, base_env, free_port, poll
from tests.support.records import fetch_runs

pytestmark = pytest.mark.slow
TTL, HEARTBEAT = 3, 1


@pytest.fixture
def fleet(db_url: str, tmp_path: Path) -> Iterator[Any]:
    anyio.run(upgrade, db_url)
    procs: list[Proc] = []

    def start(name: str, **env: str) -> Proc:
        values = base_env(
            DATABASE_URL=db_url, SCHEDULER_INSTANCE_ID=name, SCHEDULER_LOCK_TTL=str(TTL),
            SCHEDULER_HEARTBEAT_INTERVAL=str(HEARTBEAT), SCHEDULER_SHUTDOWN_GRACE="10s",
            PROBE_MARKER_DIR=str(tmp_path), **env,
        )
        proc = Proc(["runner", "--scheduler=probe"], values, free_port(), tmp_path, name)
        procs.append(proc)
        return proc

    start.url = db_url  # type: ignore[attr-defined]
    start.tmp = tmp_path  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        proc.close()


def stop_all(procs: list[Proc]) -> None:
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait_exit() in (0, -9), proc.log.read_text()


def audit(rows: list[dict[str, Any]], every: timedelta) -> dict[str, int]:
    """Exactly one succeeded run per fire time and no fire time missing between the first and last."""
    by_time: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_time[row["scheduled_for"]].append(row)
    times = sorted(by_time)
    succeeded = Counter(t for t, group in by_time.items() for r in group if r["status"] == "succeeded")
    return {
        "fire_times": len(times),
        "duplicates": sum(count - 1 for count in succeeded.values() if count > 1),
        "without_success": sum(1 for t in times if succeeded[t] == 0),
        "missing": round((times[-1] - times[0]) / every) + 1 - len(times) if times else 0,
        "nodes": len({r["node"] for r in rows if r["status"] == "succeeded"}),
    }


def test_three_replicas_run_every_fire_time_exactly_once(fleet: Any) -> None:
    seconds = int(os.environ.get("REPLICA_TEST_SECONDS", "30"))
    procs = [fleet(f"replica-{i}", PROBE_INTERVAL="@every 1s", PROBE_MAX_RETRIES="0") for i in range(3)]
    for proc in procs:
        proc.wait_ready()
    poll(lambda: len({r["scheduled_for"] for r in fetch_runs(fleet.url)}) >= seconds, seconds + 30,
         f"{seconds} fire times")
    stop_all(procs)
    result = audit(fetch_runs(fleet.url), timedelta(seconds=1))
    assert result["fire_times"] >= seconds
    assert (result["duplicates"], result["missing"], result["without_success"]) == (0, 0, 0), result
    assert result["nodes"] >= 2  # the fire times really were shared between replicas


def test_killed_holder_is_taken_over_within_one_lease(fleet: Any) -> None:
    env = {"PROBE_INTERVAL": "@every 10s", "PROBE_DURATION": "3s", "PROBE_MAX_RETRIES": "2"}
    procs = {name: fleet(name, **env) for name in ("a", "b", "c")}
    for proc in procs.values():
        proc.wait_ready()
    victim_run = poll(lambda: next((r for r in fetch_runs(fleet.url) if r["status"] == "running"), None), 30,
                      "a run to start")
    assert isinstance(victim_run, dict)
    victim = procs[victim_run["node"]]
    time.sleep(0.5)  # let the run get going: we are simulating a crash mid-run, not a crash at the claim
    victim.popen.send_signal(signal.SIGKILL)
    killed_at = datetime.now(UTC)
    assert victim.wait_exit() == -9

    def retried() -> dict[str, Any] | None:
        return next((r for r in fetch_runs(fleet.url) if r["scheduled_for"] == victim_run["scheduled_for"]
                     and r["attempt"] == 2), None)

    retry = poll(retried, TTL + HEARTBEAT + 10, "the survivor's retry")
    assert isinstance(retry, dict)
    takeover = (retry["started_at"] - killed_at).total_seconds()
    assert takeover <= TTL + HEARTBEAT + 0.5, f"took {takeover:.2f}s"
    assert retry["node"] != victim_run["node"]
    old = next(r for r in fetch_runs(fleet.url) if r["id"] == victim_run["id"])
    assert old["status"] == "abandoned"
    # The next fire times run on time on the survivors.
    next_fire = victim_run["scheduled_for"] + timedelta(seconds=20)
    poll(lambda: any(r["scheduled_for"] >= next_fire and r["status"] == "succeeded" for r in fetch_runs(fleet.url)),
         40, "two later fire times")
    stop_all([p for p in procs.values() if p is not victim])
    rows = fetch_runs(fleet.url)
    later = [r for r in rows if r["scheduled_for"] > victim_run["scheduled_for"] and r["attempt"] == 1]
    assert all(r["lag_seconds"] < 1.0 for r in later if r["status"] == "succeeded"), later
    result = audit(rows, timedelta(seconds=10))
    assert (result["duplicates"], result["missing"]) == (0, 0), result
    print(f"takeover after kill -9: {takeover:.2f}s (TTL {TTL}s, heartbeat {HEARTBEAT}s)")


def test_skewed_replica_neither_duplicates_nor_fires_early(fleet: Any) -> None:
    env = {"PROBE_INTERVAL": "@every 1s", "PROBE_MAX_RETRIES": "0"}
    skewed = fleet("skewed", SCHEDULER_CLOCK_OFFSET="30", **env)  # its clock runs 30 s ahead
    skewed.wait_ready()
    poll(lambda: len(fetch_runs(fleet.url)) >= 3, 20, "the skewed replica's first runs")
    normal = fleet("normal", **env)
    normal.wait_ready()
    poll(lambda: len(fetch_runs(fleet.url)) >= 12, 30, "runs of both replicas")
    stop_all([skewed, normal])
    rows = fetch_runs(fleet.url)
    result = audit(rows, timedelta(seconds=1))
    assert (result["duplicates"], result["missing"]) == (0, 0), result
    assert any(r["node"] == "skewed" and r["status"] == "succeeded" for r in rows)
    # The marker each run writes at its start carries the real (machine) time: no run started early.
    for row in rows:
        marker = Path(fleet.tmp) / row["id"]
        if marker.exists():
            started = datetime.fromtimestamp(marker.stat().st_mtime, UTC)
            assert started >= row["scheduled_for"] - timedelta(milliseconds=50), (row, started)


def test_sigterm_during_a_run_loses_nothing_and_steals_nothing(fleet: Any) -> None:
    env = {"PROBE_INTERVAL": "@every 1h", "PROBE_DURATION": "2s", "SCHEDULER_ADMIN_TOKEN": "t"}
    first, second = fleet("first", **env), fleet("second", **env)
    first.wait_ready()
    second.wait_ready()
    response = first.http.post("/api/admin/schedulers", json={"action": "trigger", "schedulerId": "probe"},
                               headers={"Authorization": "Bearer t"})
    assert response.status_code == 202
    run_id = response.json()["runId"]
    poll(lambda: (Path(fleet.tmp) / run_id).exists(), 10, "the run to start")
    first.popen.send_signal(signal.SIGTERM)
    assert first.wait_exit() == 0
    rows = fetch_runs(fleet.url)
    assert [(r["id"], r["status"], r["attempt"]) for r in rows] == [(run_id, "succeeded", 1)]
    assert rows[0]["fencing_token"] == 1  # nobody else ever took the lease
    stop_all([second])
