"""deploy/systemd: the units parsed, checked against the code, and `systemd-analyze verify` where it exists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.cli import EXIT_CONFIG
from manager.config import load_config
from tests.deploy import files, names

SYSTEMD = files.DEPLOY / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
PYTHON = "/opt/livedash/venv/bin/python"
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
}


@pytest.fixture(autouse=True)
def _pipeline() -> Iterator[None]:
    with names.pipeline_registered():
        yield


def unit(name: str) -> files.Unit:
    return files.systemd_unit(SYSTEMD / name)


def test_the_expected_units_exist() -> None:
    assert [p.name for p in UNITS] == ["scheduler-manager.service", "scheduler-migrate.service", "scheduler@.service"]


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_every_unit_is_hardened_and_reads_the_environment_file(path: Path) -> None:
    service = files.systemd_unit(path)
    for key, value in HARDENING.items():
        assert service.one("Service", key) == value, f"{path.name}: {key}"
    assert service.one("Service", "User") not in ("root", "0")
    assert service.get("Service", "EnvironmentFile")[0] == "/etc/livedash/scheduler.env"
    assert service.one("Service", "WorkingDirectory") == "/var/lib/livedash"
    assert service.one("Service", "StateDirectory") == "livedash", "systemd creates the writable state directory"
    assert service.one("Service", "ExecStart").startswith(PYTHON + " -m ")
    assert service.one("Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("name", ["scheduler-manager.service", "scheduler@.service"])
def test_long_running_units_restart_drain_and_wait_for_migrations(name: str) -> None:
    service = unit(name)
    assert service.one("Service", "Restart") == "on-failure"
    assert service.one("Service", "RestartPreventExitStatus") == str(EXIT_CONFIG), "bad config: do not loop"
    assert service.one("Service", "KillSignal") == "SIGTERM"
    grace = files.seconds(files.env_file(SYSTEMD / "scheduler.env.example")["SCHEDULER_SHUTDOWN_GRACE"])
    assert float(service.one("Service", "TimeoutStopSec")) > grace
    assert service.one("Unit", "Requires") == "scheduler-migrate.service"
    assert "scheduler-migrate.service" in service.one("Unit", "After").split()


def test_the_commands_are_the_manager_the_runner_and_the_migration() -> None:
    assert unit("scheduler-manager.service").one("Service", "ExecStart") == f"{PYTHON} -m manager"
    template = unit("scheduler@.service")
    assert template.one("Service", "ExecStart") == f"{PYTHON} -m runner --scheduler=%i"
    assert template.get("Service", "EnvironmentFile")[1] == "-/etc/livedash/%i.env", "optional per-instance file"
    migrate = unit("scheduler-migrate.service")
    assert migrate.one("Service", "ExecStart") == f"{PYTHON} -m manager migrate"
    assert migrate.one("Service", "Type") == "oneshot" and migrate.one("Service", "RemainAfterExit") == "yes"


def test_the_documented_instances_are_scheduler_names() -> None:
    readme = (files.DEPLOY / "README.md").read_text(encoding="utf-8")
    instances = set(re.findall(r"scheduler@([A-Za-z0-9-]+)", readme))
    assert instances, "deploy/README.md shows how to enable scheduler@NAME"
    assert instances <= names.known_schedulers() | {"NAME"}, instances


def test_environment_files_hold_settings_the_code_reads_and_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    shared = files.env_file(SYSTEMD / "scheduler.env.example")
    per_instance = files.env_file(SYSTEMD / "csv-import.env.example")
    variables = set(shared) | set(per_instance)
    for path in UNITS:
        variables |= {value.split("=", 1)[0] for value in files.systemd_unit(path).get("Service", "Environment")}
    assert not names.unknown_settings(variables), names.unknown_settings(variables)
    for variable in list(os.environ):
        if variable.startswith(("SCHEDULER_", "DATABASE_", "OPENAI_")) or variable.endswith(("_INTERVAL", "_ENABLED")):
            monkeypatch.delenv(variable)
    for key, value in {**shared, **per_instance}.items():
        monkeypatch.setenv(key, value)
    config = load_config()
    assert config.platform.scheduler_http_port == int(per_instance["SCHEDULER_HTTP_PORT"]), "the instance file wins"
    assert config.platform.scheduler_http_host == "127.0.0.1", "on a host the admin API stays on loopback"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the structural tests above cover the units")
    # verify checks that ExecStart's binary exists: point it at this interpreter, keep everything else.
    for path in UNITS:
        (tmp_path / path.name).write_text(path.read_text().replace(PYTHON, sys.executable))
    shutil.copy(tmp_path / "scheduler@.service", tmp_path / "scheduler@csv-import.service")
    targets = [
        str(tmp_path / n)
        for n in ("scheduler-manager.service", "scheduler-migrate.service", "scheduler@csv-import.service")
    ]
    result = subprocess.run(
        [analyze, "verify", "--man=no", *targets], capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0 and not problems, problems


def test_systemd_analyze_catches_a_bad_directive(tmp_path: Path) -> None:
    """The verify test above can fail: an unknown value is reported."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = (SYSTEMD / "scheduler-manager.service").read_text().replace(PYTHON, sys.executable)
    (tmp_path / "bad.service").write_text(text.replace("Restart=on-failure", "Restart=sometimes"))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / "bad.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "sometimes" in result.stdout + result.stderr
