"""`migrate-storage`, `export-state` and the legacy JSON state import, through the real commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from sqlalchemy import func, select

from storage.engine import create_engine
from storage.schema import runs
from tests.support.processes import Proc, base_env, free_port

pytestmark = pytest.mark.slow


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def count_runs(url: str) -> int:
    async def count() -> int:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(select(func.count()).select_from(runs))).scalar_one())
        finally:
            await engine.dispose()

    return anyio.run(count)


def test_sqlite_history_moves_to_postgresql(tmp_path: Path, postgres_url: str) -> None:
    source = f"sqlite:///{tmp_path / 'small.db'}"
    env = base_env(DATABASE_URL=source)
    assert cli(["manager", "migrate"], env, tmp_path).returncode == 0
    for _ in range(3):
        assert cli(["runner", "--scheduler=probe", "--once"], env, tmp_path).returncode == 0
    moved = cli(["manager", "migrate-storage", "--from", source, "--to", postgres_url], env, tmp_path)
    assert moved.returncode == 0, moved.stderr
    assert "scheduler_runs: 3 rows copied" in moved.stdout
    assert count_runs(postgres_url) == 3
    again = cli(["manager", "migrate-storage", "--from", source, "--to", postgres_url], env, tmp_path)
    assert again.returncode == 1 and "already has scheduler rows" in again.stderr
    exported = cli(["manager", "export-state", "--to", str(tmp_path / "state.json")],
                   base_env(DATABASE_URL=postgres_url), tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert len(json.loads((tmp_path / "state.json").read_text())["runs"]) == 3


def test_legacy_state_file_is_imported_on_first_start(tmp_path: Path) -> None:
    state = tmp_path / "schedules.json"
    state.write_text(json.dumps({
        "format": "livedash-schedulers-state", "version": 1, "exported_at": "2030-01-01T00:00:00Z",
        "services": {"probe": {"paused": True, "overrides": {"interval": "@every 2h"}, "anchor_at": None,
                               "last_fire_at": None}},
        "runs": [{"scheduler": "probe", "scheduled_for": "2029-12-31T23:00:00Z", "status": "succeeded"}],
    }))
    (tmp_path / "config.yaml").write_text(f"storage:\n  path: {state}\n")
    env = base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'new.db'}",
                   SCHEDULER_CONFIG_FILE=str(tmp_path / "config.yaml"))
    assert cli(["manager", "migrate"], env, tmp_path).returncode == 0
    proc = Proc(["runner", "--scheduler=probe"], env, free_port(), tmp_path)
    try:
        proc.wait_ready()
        probe = proc.http.get("/api/admin/schedulers/probe").json()["data"]
        assert probe["status"] == "PAUSED"
        assert probe["schedule"]["expression"] == "@every 2h"
        history = proc.http.get("/api/admin/schedulers/probe/runs").json()["data"]
        assert history["total"] == 1 and history["runs"][0]["scheduledFor"] == "2029-12-31T23:00:00Z"
    finally:
        proc.close()
    assert not state.exists()
    assert len(list(tmp_path.glob("schedules.json.imported-*.bak"))) == 1
