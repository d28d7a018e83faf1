"""`python -m manager companies load | list`, through the real command (what `make run` does with the demo)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import base_env

DEMO = Path(__file__).resolve().parents[2] / "demo" / "companies.yaml"

pytestmark = pytest.mark.slow


def manager(*args: str, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "manager", *args], env=base_env(DATABASE_URL=url), cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_load_is_idempotent_and_list_shows_what_was_loaded(tmp_path: Path, db_url: str) -> None:
    assert manager("migrate", url=db_url, cwd=tmp_path).returncode == 0
    first = manager("companies", "load", str(DEMO), url=db_url, cwd=tmp_path)
    assert first.returncode == 0 and "3 added, 0 updated, 0 unchanged" in first.stdout, first.stderr
    again = manager("companies", "load", str(DEMO), url=db_url, cwd=tmp_path)
    assert again.returncode == 0 and "0 added, 0 updated, 3 unchanged" in again.stdout, again.stderr
    listed = manager("companies", "list", "--json", url=db_url, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    stored = {c["name"]: c for c in json.loads(listed.stdout)}
    assert set(stored) == {"Amstel Retail", "Spree Logistik", "Hudson Hospitality"}
    assert stored["Spree Logistik"]["timezone"] == "Europe/Berlin"
    feed = DEMO.parent / "feeds" / "spree-logistik" / "sessions.csv"
    assert stored["Spree Logistik"]["csv_url"] == feed.as_uri()  # relative to the YAML file, made absolute


def test_a_bad_file_exits_2_and_an_unmigrated_database_exits_1(tmp_path: Path, sqlite_url: str) -> None:
    bad = tmp_path / "companies.yaml"
    bad.write_text("- name: Acme\n  csv_url: feeds/a.csv\n  csv_password: hunter2\n")
    refused = manager("companies", "load", str(bad), url=sqlite_url, cwd=tmp_path)
    assert refused.returncode == 2 and "csv_password" in refused.stderr and "hunter2" not in refused.stderr
    unmigrated = manager("companies", "list", url=sqlite_url, cwd=tmp_path)
    assert unmigrated.returncode == 1 and "python -m manager migrate" in unmigrated.stderr
