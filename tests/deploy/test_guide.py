"""deploy/README.md: the commands and names it shows exist, and its config example is one the code loads."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.config import env_prefix, load_config
from tests.deploy import files, names

GUIDE = files.DEPLOY / "README.md"


@pytest.fixture(autouse=True)
def _pipeline() -> Iterator[None]:
    with names.pipeline_registered():
        yield


def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def test_every_overlay_and_profile_the_guide_names_exists() -> None:
    text = guide()
    overlays = set(re.findall(r"deploy/k8s/overlays/([\w-]+)", text))
    assert overlays >= {"single", "per-scheduler", "mixed"}
    assert all((files.K8S / "overlays" / o / "kustomization.yaml").is_file() for o in overlays), overlays
    profiles = set(re.findall(r"--profile ([\w-]+)", text))
    assert profiles == set(files.PROFILES)
    for path in re.findall(r"`(deploy/[\w./-]+|compose\.yaml|Dockerfile|\.env\.example)`", text):
        assert (files.ROOT / path).exists(), path


def test_every_setting_in_the_guide_is_read_by_the_code() -> None:
    variables = set(re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)`", guide()))
    assert "DATABASE_URL" in variables and "SCHEDULER_SHUTDOWN_GRACE" in variables
    assert not names.unknown_settings(variables), names.unknown_settings(variables)
    patterns = set(re.findall(r"`<NAME>_([A-Z_]+)`", guide()))
    assert patterns and all(field.lower() in files_service_fields() for field in patterns), patterns


def files_service_fields() -> set[str]:
    from services.config import ServiceConfig

    return set(ServiceConfig.model_fields)


def test_the_second_instance_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 'more instances' example is a config the code accepts, as a session-processing instance."""
    block = re.search(r"```yaml\n(services:\n.*?)```", guide(), re.S)
    assert block, "the guide shows a config file with a second instance"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(block.group(1))
    for variable in list(os.environ):
        if variable.startswith(("SCHEDULER_", "DATABASE_", "OPENAI_")) or variable.endswith(("_INTERVAL", "_ENABLED")):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("SESSION_PROCESSING_2_TIMEOUT", "10m")
    config = load_config(config_file)
    spec = config.service("session-processing-2")
    assert spec.type_name == "session-processing"
    assert env_prefix(spec.name) == "SESSION_PROCESSING_2_"
    assert spec.config.interval == "30 * * * *"
    assert spec.config.timeout.total_seconds() == 600
