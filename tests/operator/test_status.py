"""`python -m manager status` against a database holding several services replicated over several nodes.

The rows are written the way the nodes write them (state, runs, leases, node heartbeats on the database
clock), then the command's text and JSON output and its exit codes are checked on every engine.
"""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from manager.cli import manager_main, runner_main
from manager.status import humanize_delta, render_text
from storage.dbclock import db_utc_now
from storage.engine import create_engine
from storage.migrate import upgrade
from storage.schema import leases, nodes, runs, service_state
from tests.db import run as run_async
from tests.operator.helpers import probe_config

SERVICES = {"alpha": "0 2 * * *", "beta": "@every 10m", "gamma": "*/5 * * * *"}


async def _db_now(url: str) -> datetime:
    engine = create_engine(url)
    async with engine.connect() as conn:
        value = (await conn.execute(select(db_utc_now()))).scalar_one()
    await engine.dispose()
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def _seed(url: str) -> datetime:
    """Three services on four nodes: node-a and node-b alive, node-c's heartbeat stale, node-d stopped."""
    await upgrade(url)
    now = await _db_now(url)
    engine = create_engine(url)

    def run_row(
        name: str,
        ago: timedelta,
        status: str,
        node: str,
        *,
        error: str | None = None,
        attempt: int = 1,
        duration: float | None = 1.5,
    ) -> dict[str, Any]:
        at = now - ago
        return {
            "id": f"{name}-{status}-{int(ago.total_seconds())}-{attempt}",
            "scheduler": name,
            "scheduled_for": at,
            "attempt": attempt,
            "trigger": "schedule",
            "status": status,
            "node": node,
            "started_at": at,
            "finished_at": at + timedelta(seconds=duration or 0),
            "duration_seconds": duration,
            "lag_seconds": 0.02,
            "items_processed": 1,
            "error": error,
        }

    async with engine.begin() as conn:
        await conn.execute(
            insert(nodes),
            [
                {
                    "node_id": node,
                    "hostname": f"host-{node}",
                    "pid": 100 + i,
                    "version": "0.1.0",
                    "services": svc,
                    "started_at": now - timedelta(hours=2),
                    "heartbeat_at": beat,
                    "stopped_at": stopped,
                }
                for i, (node, svc, beat, stopped) in enumerate(
                    [
                        ("node-a", ["alpha", "beta"], now - timedelta(seconds=3), None),
                        ("node-b", ["beta", "gamma"], now - timedelta(seconds=5), None),
                        ("node-c", ["gamma"], now - timedelta(minutes=10), None),
                        ("node-d", ["alpha"], now - timedelta(hours=1), now - timedelta(hours=1)),
                    ]
                )
            ],
        )
        await conn.execute(
            insert(service_state),
            [
                {
                    "scheduler": "alpha",
                    "paused": False,
                    "overrides": {},
                    "anchor_at": now - timedelta(days=3),
                    "last_fire_at": now - timedelta(hours=20),
                    "status": "RUNNING",
                    "consecutive_failures": 0,
                    "node": "node-a",
                    "updated_at": now,
                },
                {
                    "scheduler": "beta",
                    "paused": True,
                    "overrides": {},
                    "anchor_at": now - timedelta(days=1),
                    "last_fire_at": now - timedelta(minutes=30),
                    "status": "PAUSED",
                    "consecutive_failures": 0,
                    "node": "node-b",
                    "updated_at": now,
                },
                {
                    "scheduler": "gamma",
                    "paused": False,
                    "overrides": {"interval": "*/15 * * * *"},
                    "anchor_at": now - timedelta(days=1),
                    "last_fire_at": now - timedelta(minutes=4),
                    "status": "RUNNING",
                    "consecutive_failures": 1,
                    "node": "node-b",
                    "updated_at": now,
                },
            ],
        )
        await conn.execute(
            insert(leases),
            [
                {
                    "scheduler": "gamma",
                    "holder": "node-b",
                    "fencing_token": 7,
                    "run_id": "gamma-running",
                    "acquired_at": now - timedelta(seconds=20),
                    "expires_at": now + timedelta(seconds=40),
                },
                {
                    "scheduler": "alpha",
                    "holder": "node-c",
                    "fencing_token": 3,
                    "run_id": None,
                    "acquired_at": now - timedelta(hours=1),
                    "expires_at": now - timedelta(minutes=59),
                },  # expired
            ],
        )
        await conn.execute(
            insert(runs),
            [
                run_row("alpha", timedelta(hours=20), "succeeded", "node-a", duration=12.5),
                run_row("alpha", timedelta(hours=44), "failed", "node-d", error="RuntimeError: disk full"),
                run_row("beta", timedelta(minutes=30), "succeeded", "node-b", duration=0.25),
                run_row("gamma", timedelta(minutes=9), "timed_out", "node-c", error="timed out after 30s"),
                run_row("gamma", timedelta(minutes=4), "failed", "node-b", error="ValueError: bad row 17"),
            ],
        )
    await engine.dispose()
    return now


def _env(monkeypatch: pytest.MonkeyPatch, url: str, tmp_path: Path) -> None:
    for name in ("SCHEDULER_CONFIG_FILE", "SCHEDULER_LOCK_TTL", "SCHEDULER_HEARTBEAT_INTERVAL", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("SCHEDULER_PLUGINS", "tests.support.services")
    monkeypatch.setenv("SCHEDULER_CONFIG_FILE", str(probe_config(tmp_path, SERVICES)))


def _status(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = manager_main(["status", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
    ]
)
def fleet_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


def test_text_json_and_exit_codes_of_a_healthy_fleet(
    fleet_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = run_async(lambda: _seed(fleet_url))
    _env(monkeypatch, fleet_url, tmp_path)

    code, out, err = _status(capsys)
    assert code == 0, err
    assert "\033[" not in out  # no colour when stdout is not a terminal
    assert out.startswith("✓ scheduler fleet healthy:")
    assert "on 2 live nodes" in out
    alpha = out[out.index("✓ alpha") :]
    assert "RUNNING" in alpha.splitlines()[0] and "nodes: node-a" in alpha.splitlines()[0]
    assert "no lease held" in alpha.splitlines()[0]  # node-c's lease expired long ago
    assert re.search(r"last run: succeeded 19h 59m ago, took 12\.5s on node-a · 0 consecutive failures", alpha)
    assert re.search(r"next: daily at 02:00 UTC → in \d+h( \d+m)?, in 1d \d+h, in 2d \d+h", alpha)
    assert "⏸ beta" in out and "next: every 10m → paused" in out
    gamma = out[out.index("gamma") :]
    assert "lease node-b" in gamma and "nodes: node-b" in gamma  # node-c is stale, so not a replica
    assert "every 15 minutes" in gamma  # the runtime override stored by the admin API wins over the config
    assert re.search(r"last run: failed (3m 5\ds|4m) ago, took 1\.5s on node-b · 1 consecutive failure\n", gamma)
    assert "Nodes" not in out  # only with --detailed

    code, out, _ = _status(capsys, "--json")
    assert code == 0
    body = json.loads(out)
    assert body["healthy"] is True
    by_name = {s["name"]: s for s in body["services"]}
    assert set(SERVICES) <= set(by_name)
    alpha_json = by_name["alpha"]
    fires = [datetime.fromisoformat(n["at"].replace("Z", "+00:00")) for n in alpha_json["nextRuns"]]
    assert len(fires) == 3 and fires[0] > now and fires[0] - now <= timedelta(days=1)
    assert all(f.hour == 2 and f.minute == 0 for f in fires)
    assert [b - a for a, b in itertools.pairwise(fires)] == [timedelta(days=1)] * 2
    assert alpha_json["lastRun"]["status"] == "succeeded" and alpha_json["lastRun"]["durationSeconds"] == 12.5
    assert by_name["beta"]["paused"] is True and by_name["beta"]["nextRuns"] == []
    gamma_json = by_name["gamma"]
    assert gamma_json["lease"] == {
        "holder": "node-b",
        "fencingToken": 7,
        "runId": "gamma-running",
        "expiresAt": gamma_json["lease"]["expiresAt"],
    }
    assert gamma_json["schedule"]["expression"] == "*/15 * * * *"
    gamma_fires = [datetime.fromisoformat(n["at"].replace("Z", "+00:00")) for n in gamma_json["nextRuns"]]
    assert [f.minute % 15 for f in gamma_fires] == [0, 0, 0] and gamma_fires[0] > now
    assert gamma_json["consecutiveFailures"] == 1 and gamma_json["replicas"] == ["node-b"]
    assert {n["nodeId"]: n["state"] for n in body["nodes"]} == {
        "node-a": "alive",
        "node-b": "alive",
        "node-c": "stale",
        "node-d": "stopped",
    }
    assert [r["scheduler"] for r in body["failedRuns"]] == ["gamma", "gamma", "alpha"]
    assert body["summary"]["liveNodes"] == 2

    code, out, _ = _status(capsys, "--detailed")
    assert code == 0
    assert re.search(r"node-c stale, heartbeat 10m ago", out)
    assert "node-d stopped" in out
    assert re.search(r"gamma failed (3m 5\ds|4m) ago on node-b \(attempt 1\): ValueError: bad row 17", out)
    assert "alpha failed 1d 19h ago on node-d (attempt 1): RuntimeError: disk full" in out

    # The runner's command line reaches the same view.
    assert runner_main(["--status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["healthy"] is True


def test_unhealthy_fleet_exits_1_and_says_why(
    fleet_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def break_things() -> None:
        await _seed(fleet_url)
        engine = create_engine(fleet_url)
        async with engine.begin() as conn:
            await conn.execute(
                update(service_state)
                .where(service_state.c.scheduler == "gamma")
                .values(status="ERROR", consecutive_failures=3)
            )
            # alpha says RUNNING, but its only node is gone: nobody runs it any more.
            await conn.execute(
                update(nodes)
                .where(nodes.c.node_id == "node-a")
                .values(heartbeat_at=datetime.now(UTC) - timedelta(hours=1))
            )
        await engine.dispose()

    run_async(break_things)
    _env(monkeypatch, fleet_url, tmp_path)
    code, out, _ = _status(capsys)
    assert code == 1
    assert out.startswith("✗ scheduler fleet 2 unhealthy:")
    assert "✗ gamma" in out and "in ERROR after 3 consecutive failed runs; last error: ValueError: bad row 17" in out
    assert "✗ alpha" in out and "stored status is RUNNING but no live node runs it (last recorded by node-a)" in out
    body = json.loads(_status(capsys, "--json")[1])
    assert body["healthy"] is False
    assert {s["name"] for s in body["services"] if not s["healthy"]} == {"alpha", "gamma"}


def test_bad_config_exits_2_and_an_unmigrated_database_exits_1(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _env(monkeypatch, sqlite_url, tmp_path)
    monkeypatch.setenv("SCHEDULER_LOCK_TTL", "soon")
    code, out, err = _status(capsys)
    assert (code, out) == (2, "")
    assert err.startswith("error: SCHEDULER_LOCK_TTL:")
    monkeypatch.delenv("SCHEDULER_LOCK_TTL")
    monkeypatch.setenv("BETA_INTERVAL", "every tuesday")
    code, _, err = _status(capsys, "--json")
    assert code == 2 and "BETA_INTERVAL" in err
    monkeypatch.delenv("BETA_INTERVAL")
    code, out, err = _status(capsys)
    assert code == 1 and out == "" and "python -m manager migrate" in err


def test_an_empty_database_is_healthy_and_shows_every_configured_service(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_async(lambda: upgrade(sqlite_url))
    _env(monkeypatch, sqlite_url, tmp_path)
    code, out, _ = _status(capsys, "--json")
    body = json.loads(out)
    assert code == 0 and body["healthy"] is True and body["nodes"] == []
    assert {s["name"]: s["status"] for s in body["services"] if s["name"] in SERVICES} == dict.fromkeys(SERVICES, "NEW")


def test_colour_only_when_asked_and_human_deltas() -> None:
    from manager.status import FleetStatus

    fleet = FleetStatus(now=datetime(2026, 1, 1, tzinfo=UTC), services=[], nodes=[], failed_runs=[])
    assert "\033[32m✓\033[0m" in render_text(fleet, colour=True)
    assert "\033[" not in render_text(fleet, colour=False)
    assert humanize_delta(timedelta(hours=5)) == "in 5h"
    assert humanize_delta(timedelta(hours=5, minutes=12, seconds=9)) == "in 5h 12m"
    assert humanize_delta(timedelta(days=3, hours=2)) == "in 3d 2h"
    assert humanize_delta(timedelta(seconds=42)) == "in 42s"
    assert humanize_delta(timedelta(minutes=-3), past=True) == "3m ago"
    assert humanize_delta(timedelta(minutes=3), past=True) == "3m ago"
