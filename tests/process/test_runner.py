"""Real processes: `python -m runner` and `python -m manager` on a temporary SQLite file."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import Proc, base_env, free_port

pytestmark = pytest.mark.slow
TOKEN = "process-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'scheduler.db'}", SCHEDULER_ADMIN_TOKEN=TOKEN,
                    PROBE_INTERVAL="@every 1h", PROBE_MARKER_DIR=str(tmp_path))


@pytest.fixture
def migrated(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    result = subprocess.run([sys.executable, "-m", "manager", "migrate"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "database at migration" in result.stdout
    return env


Spawn = Callable[[list[str], dict[str, str]], Proc]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    procs: list[Proc] = []

    def start(args: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(args, env, free_port(), tmp_path)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.close()


def db_runs(env: dict[str, str]) -> list[tuple[str, str, str | None]]:
    path = env["DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return list(conn.execute("SELECT id, status, error FROM scheduler_runs ORDER BY scheduled_for"))


def run_cli(args: list[str], env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], env=env, cwd=tmp, capture_output=True, text=True,
                          timeout=60)


def trigger(proc: Proc, name: str = "probe") -> str:
    response = proc.http.post("/api/admin/schedulers", json={"action": "trigger", "schedulerId": name},
                              headers=AUTH)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["runId"]
    return run_id


def wait_for_marker(tmp: Path, run_id: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not (tmp / run_id).exists():
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.02)


def test_sigterm_mid_run_cancels_after_grace_and_exits_0(
    migrated: dict[str, str], spawn: Spawn, tmp_path: Path
) -> None:
    env = {**migrated, "PROBE_DURATION": "60s", "SCHEDULER_SHUTDOWN_GRACE": "1s"}
    proc = spawn(["runner", "--scheduler=probe"], env)
    proc.wait_ready()
    run_id = trigger(proc)
    wait_for_marker(tmp_path, run_id)
    listed = proc.http.get("/api/admin/schedulers/probe/runs").json()["data"]["runs"]
    assert [(r["id"], r["status"]) for r in listed] == [(run_id, "running")]
    assert 'scheduler_runs_in_progress{scheduler="probe"} 1.0' in proc.http.get("/metrics").text

    started = time.monotonic()
    proc.popen.send_signal(signal.SIGTERM)
    saw_draining = False
    while proc.popen.poll() is None and not saw_draining:
        try:
            saw_draining = proc.http.get("/readyz").status_code == 503
        except httpx.TransportError:
            break
    assert proc.wait_exit() == 0
    assert time.monotonic() - started < 10
    assert saw_draining, "readiness should fail while draining"
    assert db_runs(env) == [(run_id, "cancelled", "shutdown grace of 1s elapsed")]


def test_sigterm_lets_a_short_run_finish(migrated: dict[str, str], spawn: Spawn, tmp_path: Path) -> None:
    env = {**migrated, "PROBE_DURATION": "1s", "SCHEDULER_SHUTDOWN_GRACE": "30s"}
    proc = spawn(["runner", "--scheduler=probe"], env)
    proc.wait_ready()
    run_id = trigger(proc)
    wait_for_marker(tmp_path, run_id)
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait_exit() == 0
    assert db_runs(env) == [(run_id, "succeeded", None)]


def test_second_signal_cancels_at_once(migrated: dict[str, str], spawn: Spawn, tmp_path: Path) -> None:
    env = {**migrated, "PROBE_DURATION": "120s", "SCHEDULER_SHUTDOWN_GRACE": "120s"}
    proc = spawn(["runner", "--scheduler=probe"], env)
    proc.wait_ready()
    run_id = trigger(proc)
    wait_for_marker(tmp_path, run_id)
    proc.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while proc.http.get("/readyz").status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    started = time.monotonic()
    proc.popen.send_signal(signal.SIGINT)
    assert proc.wait_exit() == 0
    assert time.monotonic() - started < 8
    (row,) = db_runs(env)
    assert row[:2] == (run_id, "cancelled") and "second SIGINT" in (row[2] or "")


def test_scheduled_runs_and_manager_serves_every_service(migrated: dict[str, str], spawn: Spawn) -> None:
    env = {**migrated, "PROBE_INTERVAL": "@every 1s"}
    proc = spawn(["manager"], env)
    proc.wait_ready()
    names = {s["id"] for s in proc.http.get("/api/admin/schedulers").json()["data"]["schedulers"]}
    assert {"probe", "run-history-retention"} <= names
    deadline = time.monotonic() + 15
    while sum(status == "succeeded" for _, status, _ in db_runs(env)) < 2:
        assert time.monotonic() < deadline, "no scheduled runs"
        time.sleep(0.1)
    proc.popen.send_signal(signal.SIGINT)
    assert proc.wait_exit() == 0


def test_runner_exits_1_when_its_service_ends_in_error(migrated: dict[str, str], spawn: Spawn) -> None:
    env = {**migrated, "PROBE_INTERVAL": "@every 1s", "PROBE_FAIL": "true", "PROBE_MAX_RETRIES": "0",
           "PROBE_FAILURE_THRESHOLD": "1", "SCHEDULER_AUTO_RESTART": "false"}
    proc = spawn(["runner", "--scheduler=probe"], env)
    assert proc.wait_exit() == 1
    assert "ERROR" in proc.log.read_text()


def test_bad_config_exits_2_with_one_line(env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(["runner", "--scheduler=probe"], {**env, "PROBE_TIMEOUT": "soon"}, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "PROBE_TIMEOUT" in result.stderr


def test_unknown_scheduler_exits_2_listing_valid_names(env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(["runner", "--scheduler=nope"], env, tmp_path)
    assert result.returncode == 2
    assert "unknown scheduler 'nope'" in result.stderr and "run-history-retention" in result.stderr
    missing = run_cli(["runner"], env, tmp_path)
    assert missing.returncode == 2 and "--scheduler (or SCHEDULER_NAME) is required" in missing.stderr


def test_list_and_check_config(env: dict[str, str], tmp_path: Path) -> None:
    listed = run_cli(["runner", "--list"], env, tmp_path)
    assert listed.returncode == 0 and "run-history-retention" in listed.stdout and "probe" in listed.stdout
    secret_env = {**env, "DATABASE_URL": "postgresql://app:hunter2@db.example:5432/app"}
    checked = run_cli(["runner", "--scheduler=probe", "--check-config"], secret_env, tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "hunter2" not in checked.stdout and TOKEN not in checked.stdout
    assert '"interval": "@every 1h"' in checked.stdout


def test_once_exit_codes(migrated: dict[str, str], tmp_path: Path) -> None:
    ok = run_cli(["runner", "--scheduler=probe", "--once"], migrated, tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "probe: succeeded" in ok.stdout
    failing = run_cli(["runner", "--scheduler=probe", "--once"],
                      {**migrated, "PROBE_FAIL": "true", "PROBE_MAX_RETRIES": "0"}, tmp_path)
    assert failing.returncode == 1
    assert [status for _, status, _ in db_runs(migrated)] == ["succeeded", "failed"]


def test_unmigrated_database_says_what_to_do(env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(["runner", "--scheduler=probe"], env, tmp_path)
    assert result.returncode == 1
    assert "python -m manager migrate" in result.stderr


def test_port_in_use_is_a_clear_error(migrated: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(["runner", "--scheduler=probe", "--port", str(port)], migrated, tmp_path)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
