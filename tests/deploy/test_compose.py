"""compose.yaml: the Compose schema, `docker compose config` where it exists, and the three patterns as profiles."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from manager.config import load_config
from tests.deploy import files, names

COMPOSE = files.ROOT / "compose.yaml"
ENV_EXAMPLE = files.ROOT / ".env.example"
SECRETS = ("DATABASE_PASSWORD", "SCHEDULER_ADMIN_TOKEN", "OPENAI_API_KEY")


@pytest.fixture(autouse=True)
def _pipeline() -> Iterator[None]:
    with names.pipeline_registered():
        yield


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = files.load_yaml(COMPOSE)
    return data


def scheduler_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every service built from this repository's image (all but postgres)."""
    return {name: body for name, body in compose["services"].items() if "build" in body}


def argv(service: dict[str, Any]) -> list[str]:
    entrypoint = service.get("entrypoint") or ["python", "-m", "runner"]  # the image's ENTRYPOINT
    return [*entrypoint, *(service.get("command") or [])]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment, interpolated with the values of .env.example."""
    env = files.env_file(ENV_EXAMPLE)
    return {key: files.interpolate(str(value), env) for key, value in service.get("environment", {}).items()}


def test_compose_file_matches_the_compose_specification_schema(compose: dict[str, Any]) -> None:
    schema = files.load_json(files.ROOT / "tests" / "deploy" / "schemas" / "compose_spec.json")
    # `name` (the project name) joined the specification after the vendored schema was published.
    schema["properties"]["name"] = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"}
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'.'.join(str(p) for p in e.path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    broken = {
        **compose,
        "services": {**compose["services"], "x": {"image": "a", "depends_on": {"y": {"condition": "when_ready"}}}},
    }
    assert list(validator.iter_errors(broken)), "the schema check must reject an unknown depends_on condition"


def _compose_client() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False)
    return docker if probe.returncode == 0 else None


@pytest.mark.parametrize("profile", files.PROFILES)
def test_docker_compose_config_accepts_every_profile(profile: str) -> None:
    docker = _compose_client()
    if docker is None:
        pytest.skip(
            "the docker client has no compose plugin here (`docker compose version` fails); the schema "
            "and structural tests cover compose.yaml"
        )
    result = subprocess.run(
        [
            docker,
            "compose",
            "--env-file",
            str(ENV_EXAMPLE),
            "--profile",
            profile,
            "-f",
            str(COMPOSE),
            "config",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_profiles_are_the_three_patterns_and_the_database_starts_in_each(compose: dict[str, Any]) -> None:
    services = compose["services"]
    profiles = {p for body in services.values() for p in body.get("profiles", [])}
    assert profiles == set(files.PROFILES)
    assert "profiles" not in services["postgres"] and "profiles" not in services["migrate"]
    assert "pgdata" in compose["volumes"]
    assert any(v.startswith("pgdata:") for v in services["postgres"]["volumes"]), "PostgreSQL needs a named volume"
    assert services["postgres"]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


@pytest.mark.parametrize("profile", files.PROFILES)
def test_each_profile_runs_every_scheduler_exactly_once(compose: dict[str, Any], profile: str) -> None:
    running: dict[str, list[str]] = {}
    for name, body in scheduler_services(compose).items():
        if profile not in body.get("profiles", []):
            continue
        for scheduler in files.schedulers_run(argv(body), environment(body), files.DEPLOYED_SCHEDULERS):
            running.setdefault(scheduler, []).append(name)
    assert set(running) <= names.known_schedulers()
    assert set(running) == files.DEPLOYED_SCHEDULERS, f"profile {profile} runs {sorted(running)}"
    assert all(len(where) == 1 for where in running.values()), running


def test_migrations_run_once_before_every_scheduler(compose: dict[str, Any]) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    assert argv(migrate) == ["python", "-m", "manager", "migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name, body in scheduler_services(compose).items():
        if name == "migrate":
            continue
        assert body["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name


def test_scheduler_containers_are_healthchecked_on_readyz_and_drain_on_stop(compose: dict[str, Any]) -> None:
    routes = names.http_routes()
    for name, body in scheduler_services(compose).items():
        if name == "migrate":
            assert body["healthcheck"] == {"disable": True}
            continue
        env = environment(body)
        check = " ".join(body["healthcheck"]["test"])
        assert f"127.0.0.1:{env['SCHEDULER_HTTP_PORT']}/readyz" in check and "GET" in routes["/readyz"], name
        assert env["SCHEDULER_HTTP_HOST"] == "0.0.0.0", f"{name}: the port is unreachable on 127.0.0.1"
        assert body["stop_signal"] == "SIGTERM"
        assert files.compose_seconds(body["stop_grace_period"]) > files.seconds(env["SCHEDULER_SHUTDOWN_GRACE"])
        assert body["read_only"] is True and "/tmp" in body["tmpfs"], name
        assert body["cap_drop"] == ["ALL"], name
        for port in body.get("ports", []):
            assert port.startswith("127.0.0.1:") and port.endswith(f":{env['SCHEDULER_HTTP_PORT']}"), (name, port)


def test_mixed_pattern_runs_session_processing_twice(compose: dict[str, Any]) -> None:
    mixed = {n: b for n, b in compose["services"].items() if "mixed" in b.get("profiles", [])}
    (analysis,) = [b for b in mixed.values() if "--scheduler=session-processing" in argv(b)]
    assert analysis["deploy"]["replicas"] == 2
    assert "ports" not in analysis, "replicas cannot share a host port"


def test_secrets_come_from_the_env_file_never_inline(compose: dict[str, Any]) -> None:
    example = files.env_file(ENV_EXAMPLE, commented=True)
    for name, body in compose["services"].items():
        for key, value in body.get("environment", {}).items():
            if key in SECRETS or "PASSWORD" in key:
                assert files.compose_variables(str(value)), f"{name}: {key} must come from .env, not compose.yaml"
            for variable in files.compose_variables(str(value)):
                assert variable in example, f"{name}: ${{{variable}}} is not documented in .env.example"
    assert ".env" in (files.ROOT / ".dockerignore").read_text().split(), "the real .env must not enter the image"


def test_every_variable_is_a_setting_the_code_reads(compose: dict[str, Any]) -> None:
    variables = set(files.env_file(ENV_EXAMPLE, commented=True))
    for body in scheduler_services(compose).values():
        variables |= set(body.get("environment", {}))
    assert not names.unknown_settings(variables), f"not read by the code: {names.unknown_settings(variables)}"


def test_every_scheduler_container_has_a_configuration_the_code_accepts(
    compose: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, body in scheduler_services(compose).items():
        with monkeypatch.context() as patch:
            for variable in list(os.environ):
                if variable.startswith(("SCHEDULER_", "DATABASE_", "OPENAI_")) or variable.endswith(
                    ("_INTERVAL", "_ENABLED")
                ):
                    patch.delenv(variable)
            for key, value in environment(body).items():
                patch.setenv(key, value)
            config = load_config()
            assert config.storage.driver == "postgresql" and config.storage.host == "postgres", name
            assert config.platform.scheduler_http_port == 8080, name


def test_missing_secret_is_refused_by_compose_interpolation(compose: dict[str, Any]) -> None:
    """`${DATABASE_PASSWORD:?...}`: without .env, compose stops with the message instead of an empty password."""
    password = compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    with pytest.raises(KeyError, match="DATABASE_PASSWORD"):
        files.interpolate(password, {})
