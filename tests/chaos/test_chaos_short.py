"""Chaos soak, short version: `bench.chaos` for 60 s on PostgreSQL (three kills), asserting its audit passes.

CHAOS TEST (marked slow + postgresql; ~95 s): three `python -m manager` replicas of six `chaos-recorder`
services, one replica `kill -9`-ed every 20 s and restarted at once, a 15 s drain, then the audit of
`bench.chaos` (exactly one terminal record per fire time, retries honoured, no overlapping runs, fencing
tokens never backwards, nothing left running). One engine only, to keep `make test` bearable: PostgreSQL.
MariaDB gets the same soak in `make chaos` (10 minutes per engine). Like every database test it fails,
not skips, under CI=true when the server is unreachable (the `postgres_url` fixture).

The victims are drawn with a random seed, printed on failure; CHAOS_SEED=<n> replays a draw.

The audit's own checks are tested first, on synthetic rows: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import json
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from bench.chaos import DEFAULT_SERVICES, Kill, ServiceSpec, SoakOptions, audit, classify, overlaps, soak
from storage.migrate import upgrade

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def row(
    scheduled: int,
    attempt: int,
    status: str,
    *,
    start: float | None = None,
    end: float | None = None,
    token: int | None = None,
    node: str = "a",
) -> dict[str, Any]:
    began = T0 + timedelta(seconds=start if start is not None else scheduled)
    return {
        "id": f"r{scheduled}-{attempt}",
        "scheduler": "chaos-x",
        "scheduled_for": T0 + scheduled * SECOND,
        "attempt": attempt,
        "trigger": "schedule" if attempt == 1 else "retry",
        "status": status,
        "node": node,
        "started_at": began,
        "finished_at": began + timedelta(seconds=end if end is not None else 0.1),
        "fencing_token": token,
        "error": None,
    }


def test_classify_names_the_terminal_record_and_what_is_wrong() -> None:
    assert classify([row(0, 1, "succeeded")], 2) == ("succeeded", [])
    assert classify([row(0, 2, "succeeded"), row(0, 1, "abandoned")], 2) == ("succeeded", [])
    assert classify([row(0, 1, "failed"), row(0, 2, "failed"), row(0, 3, "failed")], 2) == ("failed", [])
    assert classify([row(0, 1, "abandoned")], 2) == ("retry lost: abandoned", [])
    assert classify([row(0, 1, "failed")], 0) == ("failed", [])
    assert classify([row(0, 1, "succeeded"), row(0, 2, "succeeded")], 2)[1] == [
        "2 successes",
        "attempt 2 after attempt 1 succeeded",
    ]
    assert classify([row(0, 1, "failed"), row(0, 3, "running")], 2)[1] == [
        "attempts [1, 3] are not 1..2",
        "still running",
    ]
    assert classify([row(0, 1, "skipped"), row(0, 2, "succeeded")], 2)[1] == ["attempt 2 after attempt 1 skipped"]


def test_overlaps_are_found_with_and_without_tolerance() -> None:
    def span(a: float, b: float, name: str) -> tuple[datetime, datetime, dict[str, Any]]:
        return T0 + timedelta(seconds=a), T0 + timedelta(seconds=b), {"name": name}

    assert overlaps([span(0, 1, "a"), span(1, 2, "b")]) == []
    assert overlaps([span(0, 3, "a"), span(1, 1.5, "b"), span(2, 4, "c")]) == [
        ({"name": "a"}, {"name": "b"}, 0.5),
        ({"name": "a"}, {"name": "c"}, 1.0),
    ]
    assert overlaps([span(0, 1.05, "a"), span(1, 2, "b")], timedelta(milliseconds=100)) == []


def test_audit_flags_missing_fires_overlaps_stuck_runs_and_fencing_going_backwards() -> None:
    spec = {"chaos-x": ServiceSpec("@every 1s", max_retries=2)}
    rows = [
        row(1, 1, "succeeded", token=1),
        row(2, 1, "succeeded", token=2, end=1.5),  # overlaps fire 3
        row(3, 1, "succeeded", token=3),
        row(5, 1, "running", token=None),  # fire 4: no record
        row(6, 1, "succeeded", start=6.2, token=2),
    ]  # a token lower than one already stored
    events = [
        {
            "kind": "start",
            "service": "chaos-x",
            "run_id": r["id"],
            "at": r["started_at"],
            "token": r["fencing_token"],
            "node": "a",
            "pid": 1,
            "scheduled_for": r["scheduled_for"],
            "attempt": 1,
        }
        for r in rows
    ]
    result = audit(
        rows, {"chaos-x": T0}, events, spec, [], window=(T0 + SECOND, T0 + 6 * SECOND), span=(T0, T0 + 7 * SECOND)
    )
    checks = result["checks"]
    assert [e["scheduled_for"] for e in checks["exactly_one_terminal"]["examples"]] == [
        (T0 + 4 * SECOND).isoformat(),
        (T0 + 5 * SECOND).isoformat(),
    ]
    assert checks["none_running"]["count"] == 1
    assert checks["no_overlap_rows"]["count"] == 1
    assert checks["fencing"]["count"] == 2  # the row order and the journal order both go 3 -> 2
    assert checks["retries_honoured"]["ok"]
    assert result["fire_times_audited"] == 6


def test_audit_ends_a_killed_run_at_its_kill() -> None:
    spec = {"chaos-x": ServiceSpec("@every 1s", max_retries=0)}
    killed = row(1, 1, "abandoned", end=6.0, node="a")  # marked abandoned 6 s later, by the takeover
    after = row(3, 1, "succeeded", node="b")
    kill = Kill("a", 7, T0 + timedelta(seconds=1.5), 1.0)
    result = audit(
        [killed, after],
        {"chaos-x": T0},
        [],
        spec,
        [kill],
        window=(T0 + SECOND, T0 + SECOND),
        span=(T0, T0 + 4 * SECOND),
    )
    assert result["checks"]["no_overlap_rows"]["ok"], result["checks"]["no_overlap_rows"]
    assert result["outcomes"] == {"abandoned": 1}


@pytest.mark.slow
@pytest.mark.postgresql
def test_chaos_soak_60_seconds_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 30)))
    anyio.run(upgrade, postgres_url)
    result = soak(postgres_url, "postgresql", SoakOptions(seconds=60, kill_every=20, seed=seed), tmp_path)
    brief = json.dumps(
        {
            "seed": seed,
            "kills": result["kills"],
            "outcomes": result["outcomes"],
            "checks": result["checks"],
            "error": result["error"],
        },
        default=str,
    )[:6000]
    assert result["error"] is None, brief
    assert len(result["kills"]) == 3, brief
    assert set(result["exit_codes"].values()) == {0}, brief
    # Every service really ran during the window, on more than one replica between them.
    per_service = result["outcomes_per_service"]
    assert set(per_service) == {f"chaos-{name}" for name in DEFAULT_SERVICES}
    assert all(counts.get("succeeded", 0) > 0 for counts in per_service.values()), brief
    assert result["fire_times_audited"] >= 200, brief
    checks = result["checks"]
    for name in ("exactly_one_terminal", "no_overlap", "no_overlap_rows", "fencing", "none_running"):
        assert checks[name]["ok"], f"{name} failed: {brief}"
    # A kill must not eat a fire time's owed retries: neither when a heartbeat takes the dead holder's lease
    # over, nor when the service's next fire takes the expired lease first (the heartbeat's unretried sweep).
    assert checks["retries_honoured"]["ok"], f"retries_honoured failed: {brief}"
