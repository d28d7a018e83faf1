"""Dockerfile and .dockerignore, parsed: what the built image is, without a Docker engine to build it."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from typing import Any

import pytest

from tests.deploy import files, names
from tests.deploy.files import Instruction

DOCKERFILE = files.ROOT / "Dockerfile"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|make|build-essential|python3?-dev|libpq-dev|apt-get|apk)\b")


@pytest.fixture(scope="module")
def stages() -> list[list[Instruction]]:
    return files.dockerfile(DOCKERFILE)


def final(stages: list[list[Instruction]]) -> list[Instruction]:
    return stages[-1]


def one(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"the final stage needs exactly one {keyword}, has {len(found)}"
    return found[0]


def build_args(stages: list[list[Instruction]]) -> dict[str, str]:
    args = {}
    for instruction in stages[0]:
        if instruction.keyword == "ARG" and "=" in instruction.args:
            key, _, value = instruction.args.partition("=")
            args[key] = value
    return args


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for word in files.shell_words(instruction.args):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def test_multi_stage_on_slim_python_311(stages: list[list[Instruction]]) -> None:
    assert len(stages) >= 2, "build and runtime stages"
    args = build_args(stages)
    for stage in stages:
        base = stage[0].args.split()[0] if stage[0].keyword == "FROM" else one(stage, "FROM").args.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", image), image
    froms = [i for stage in stages for i in stage if i.keyword == "FROM"]
    assert froms[-1].args.split()[-1] == "runtime"
    assert any(i.keyword == "COPY" and "--from=build" in i.args for i in final(stages)), "runtime copies the venv"


def test_final_stage_has_no_build_tools_and_installs_nothing(stages: list[list[Instruction]]) -> None:
    for instruction in final(stages):
        if instruction.keyword == "RUN":
            assert not BUILD_TOOLS.search(instruction.args), f"line {instruction.line}: {instruction.args}"
            assert "pip install" not in instruction.args, f"line {instruction.line}: installs belong in the build"


def test_runs_as_a_fixed_non_root_user(stages: list[list[Instruction]]) -> None:
    user = one(final(stages), "USER").args
    uid = user.split(":")[0]
    assert uid not in ("root", "0") and uid.isdigit(), "a numeric non-root uid, so runAsNonRoot can verify it"
    assert "runAsUser: " + uid in (files.K8S / "schedulers" / "csv-import" / "csv-import.yaml").read_text()


def test_entrypoint_is_the_runner_and_stop_signal_drains(stages: list[list[Instruction]]) -> None:
    stage = final(stages)
    assert one(stage, "ENTRYPOINT").exec_form() == ["python", "-m", "runner"]
    assert one(stage, "STOPSIGNAL").args == "SIGTERM"
    assert one(stage, "CMD").exec_form() == ["--list"], "without a scheduler argument it lists the valid names"


def test_healthcheck_asks_readyz_on_the_configured_port(stages: list[list[Instruction]]) -> None:
    stage = final(stages)
    check = one(stage, "HEALTHCHECK").args
    assert "/readyz" in check and "GET" in names.http_routes()["/readyz"]
    assert "SCHEDULER_HTTP_PORT" in check
    env = env_of(stage)
    assert env["SCHEDULER_HTTP_HOST"] == "0.0.0.0", "127.0.0.1 (the code's default) is unreachable from outside"
    assert one(stage, "EXPOSE").args == env["SCHEDULER_HTTP_PORT"]


def test_environment_names_are_settings_or_python_runtime(stages: list[list[Instruction]]) -> None:
    variables = {name for stage in stages for name in env_of(stage)} - names.RUNTIME_ENV
    assert not names.unknown_settings(variables), names.unknown_settings(variables)
    assert env_of(final(stages))["PYTHONDONTWRITEBYTECODE"] == "1", "the root filesystem is read-only"


def test_working_directory_is_the_writable_state_volume(stages: list[list[Instruction]]) -> None:
    """The SQLite default (./var/scheduler.db) must land on a volume the non-root user can write."""
    stage = final(stages)
    workdir = one(stage, "WORKDIR").args
    assert one(stage, "VOLUME").exec_form() == [workdir]
    created = " ".join(i.args for i in stage if i.keyword == "RUN")
    assert f"{workdir}/var" in created and "-o 10001" in created
    assert "/var/lib/livedash" in (files.K8S / "schedulers" / "csv-import" / "csv-import.yaml").read_text()


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((files.ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_build_copies_every_package_and_installs_existing_extras(stages: list[list[Instruction]]) -> None:
    build = stages[-2]
    copied = {files.shell_words(i.args)[0].rstrip("/") for i in build if i.keyword == "COPY"}
    copied |= {word for i in build if i.keyword == "COPY" for word in files.shell_words(i.args)[:-1]}
    packages = {pattern.rstrip("*") for pattern in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, f"packages not copied into the build: {packages - copied}"
    assert {"pyproject.toml", "README.md"} <= copied
    install = " ".join(i.args for i in build if i.keyword == "RUN")
    extras = re.search(r'"\.\[([\w,]+)\]"', install)
    assert extras, "the build installs the project with its database drivers"
    known = set(_pyproject()["project"]["optional-dependencies"])
    assert set(extras.group(1).split(",")) <= known - {"dev"}


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").removeprefix("**/")
        hit = fnmatch.fnmatch(path, body) or any(fnmatch.fnmatch(part, body) for part in path.split("/"))
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest(stages: list[list[Instruction]]) -> None:
    patterns = [
        line.strip()
        for line in (files.ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for instruction in stages[-2]:
        if instruction.keyword == "COPY":
            for source in files.shell_words(instruction.args)[:-1]:
                assert (files.ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not _ignored(source, patterns), f"COPY {source} is excluded by .dockerignore"
    for unwanted in (".git", ".venv", ".env", "tests", "var/scheduler.db", "manager/__pycache__"):
        assert _ignored(unwanted, patterns), f"{unwanted} would be sent to the build"
