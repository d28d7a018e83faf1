"""Readers for the deployment files: YAML, env files, systemd units, the Dockerfile, and what each workload runs.

Pure parsing, no judgement: the tests decide what is right.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter

from services.config import Seconds
from tests.deploy.kustomize import load_documents as load_documents
from tests.deploy.names import ROOT as ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("single", "per-scheduler", "mixed", "servicemonitor")
PROFILES = ("single", "per-scheduler", "mixed")
# What every pattern must run, each exactly once (database-backup arrives with its own issue).
DEPLOYED_SCHEDULERS = frozenset(
    {"csv-import", "import-processing", "session-processing", "batch-processing", "run-history-retention"}
)
_ENV_LINE = re.compile(r"^\s*(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")
_COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def k8s_manifests() -> list[Path]:
    """Every Kubernetes object file under deploy/k8s (kustomization files are not objects)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def secret_example() -> dict[str, Any]:
    (doc,) = load_documents(K8S / "secret.example.yaml")
    return doc


def env_file(path: Path, *, commented: bool = False) -> dict[str, str]:
    """KEY=value lines of an env file; with `commented`, also the `# KEY=value` examples."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _ENV_LINE.match(line)
        if match and (commented or not match.group(1)):
            values[match.group(2)] = match.group(3).split(" #")[0].strip() if match.group(1) else match.group(3)
    return values


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` with `env` (KeyError when a required one is unset)."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        given = env.get(name)
        if given:
            return given
        if op in (":-", "-"):
            return arg or ""
        if op in (":?", "?"):
            raise KeyError(f"${{{name}}} is required: {arg}")
        return ""

    return _COMPOSE_VAR.sub(replace, value)


def compose_variables(value: str) -> set[str]:
    return {match.group(1) for match in _COMPOSE_VAR.finditer(value)}


def seconds(duration: str) -> float:
    """A duration as the code reads SCHEDULER_SHUTDOWN_GRACE (30s, 1m, a bare number of seconds)."""
    grace: timedelta = TypeAdapter(Seconds).validate_python(duration)
    return grace.total_seconds()


def compose_seconds(duration: str) -> float:
    """Compose/Go durations such as 45s, 1m30s."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(float(n) * units[u] for n, u in parts)


# -- systemd -----------------------------------------------------------------------------------------------------


@dataclass
class Unit:
    path: Path
    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def get(self, section: str, key: str) -> list[str]:
        return [value for name, value in self.sections.get(section, []) if name == key]

    def one(self, section: str, key: str) -> str:
        values = self.get(section, key)
        assert len(values) == 1, f"{self.path.name}: [{section}] {key}= appears {len(values)} times"
        return values[0]


def systemd_unit(path: Path) -> Unit:
    """A unit file as sections of (key, value) pairs in order; keys may repeat (EnvironmentFile=)."""
    unit = Unit(path)
    section: str | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.sections.setdefault(section, [])
            continue
        key, sep, value = line.partition("=")
        if section is None or not sep:
            raise ValueError(f"{path.name}:{number}: not a key=value line in a section: {raw!r}")
        unit.sections[section].append((key.strip(), value.strip()))
    return unit


# -- Dockerfile --------------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array form (`["python", "-m", "runner"]`), or None for the shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


def dockerfile(path: Path) -> list[list[Instruction]]:
    """The instructions, split into build stages (instructions before the first FROM go with stage 0)."""
    stages: list[list[Instruction]] = [[]]
    logical, start = "", 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if logical and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by the builder
        if not logical:
            start = number
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, args = logical.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), start)
        if instruction.keyword == "FROM" and stages[-1] and any(i.keyword == "FROM" for i in stages[-1]):
            stages.append([])
        stages[-1].append(instruction)
        logical = ""
    return stages


def shell_words(text: str) -> list[str]:
    return shlex.split(text, comments=False, posix=True)


# -- what a container runs ---------------------------------------------------------------------------------------


def schedulers_run(argv: list[str], env: dict[str, str], available: frozenset[str]) -> set[str]:
    """The scheduler instances a container with this argv (entrypoint + args) and env runs.

    `python -m runner --scheduler=NAME` runs NAME; `python -m manager` runs every available scheduler whose
    `<NAME>_ENABLED` is not false.
    """
    from manager.config import env_prefix

    words = list(argv)
    if words[:3] == ["python", "-m", "manager"]:
        assert len(words) == 3 or words[3] == "run", f"not the manager's run command: {argv}"
        return {
            name
            for name in available
            if env.get(env_prefix(name) + "ENABLED", "true").strip().lower() not in ("false", "0", "no", "off")
        }
    assert words[:3] == ["python", "-m", "runner"], f"not a scheduler process: {argv}"
    names = [w.split("=", 1)[1] for w in words if w.startswith("--scheduler=")]
    for i, word in enumerate(words):
        if word in ("--scheduler", "-s") and i + 1 < len(words):
            names.append(words[i + 1])
    assert len(names) == 1, f"one --scheduler expected in {argv}"
    return set(names)
