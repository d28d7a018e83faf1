"""Configuration from env vars and YAML: names, precedence, interpolation and one-line errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from manager.config import ConfigError, interpolate, load_config, redacted
from services.config import ServiceConfig, format_duration
from tests.support.services import ProbeConfig


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "DATABASE_PORT", "SCHEDULER_LOCK_TTL", "SCHEDULER_HEARTBEAT_INTERVAL",
                 "SCHEDULER_ADMIN_TOKEN", "SCHEDULER_CONFIG_FILE", "SCHEDULER_HTTP_PORT",
                 "LOG_FORMAT", "SCHEDULER_ENABLED", "RUN_HISTORY_RETENTION_INTERVAL", "PROBE_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SCHEDULER_PLUGINS", "tests.support.services")


def test_defaults() -> None:
    config = load_config()
    assert config.storage.url() == "sqlite:///./var/scheduler.db"
    assert (config.platform.scheduler_http_host, config.platform.scheduler_http_port) == ("127.0.0.1", 8080)
    assert config.platform.scheduler_shutdown_grace == timedelta(seconds=30)
    names = [spec.name for spec in config.services]
    assert "run-history-retention" in names and "probe" in names


def test_timeout_is_milliseconds_like_the_original(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBE_TIMEOUT", "300000")
    assert load_config().service("probe").config.timeout == timedelta(minutes=5)
    monkeypatch.setenv("PROBE_TIMEOUT", "90s")
    assert load_config().service("probe").config.timeout == timedelta(seconds=90)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PROBE_TIMEOUT", "soon", "PROBE_TIMEOUT: expected a duration"),
        ("PROBE_INTERVAL", "61 * * * *", "PROBE_INTERVAL: invalid schedule '61 * * * *'"),
        ("PROBE_TIMEZONE", "Mars/Base", "PROBE_TIMEZONE:"),
        ("PROBE_MAX_RETRIES", "-1", "PROBE_MAX_RETRIES: must be 0 or more"),
        ("PROBE_ENABLED", "maybe", "PROBE_ENABLED:"),
        ("SCHEDULER_HTTP_PORT", "http", "SCHEDULER_HTTP_PORT:"),
        ("SCHEDULER_HTTP_PORT", "70000", "SCHEDULER_HTTP_PORT: must be a TCP port"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT:"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str,
                                      expected: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_config()
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_yaml_file_with_interpolation_and_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "scheduler.yaml"
    file.write_text(
        "scheduler:\n"
        "  http_port: ${PORT:-9090}\n"
        "  admin_token: ${TOKEN}\n"
        "database_url: sqlite:///${DATA_DIR:-/tmp}/x.db\n"
        "log_format: json\n"
        "services:\n"
        "  probe:\n"
        "    interval: '@every 5m'\n"
        "    duration: 2s\n"
        "  probe-eu:\n"
        "    type: probe\n"
        "    interval: '0 2 * * *'\n"
        "    timezone: Europe/Berlin\n"
    )
    monkeypatch.setenv("TOKEN", "s3cret")
    monkeypatch.setenv("PROBE_EU_INTERVAL", "0 3 * * *")  # env beats the file, per instance
    config = load_config(file)
    assert config.platform.scheduler_http_port == 9090
    assert config.platform.scheduler_admin_token is not None
    assert config.platform.scheduler_admin_token.get_secret_value() == "s3cret"
    assert config.storage.url() == "sqlite:////tmp/x.db"
    assert config.platform.log_format == "json"
    probe = config.service("probe").config
    assert isinstance(probe, ProbeConfig) and probe.duration == timedelta(seconds=2)
    eu = config.service("probe-eu")
    assert eu.type_name == "probe" and eu.env_prefix == "PROBE_EU_"
    assert eu.config.interval == "0 3 * * *" and eu.config.timezone == "Europe/Berlin"
    monkeypatch.setenv("SCHEDULER_HTTP_PORT", "7000")
    assert load_config(file).platform.scheduler_http_port == 7000


def test_many_instances_of_one_type(tmp_path: Path) -> None:
    file = tmp_path / "bench.yaml"
    file.write_text("services:\n" + "".join(
        f"  probe-{i}:\n    type: probe\n    interval: '@every 1s'\n" for i in range(100)))
    config = load_config(file)
    assert len([s for s in config.services if s.type_name == "probe"]) == 101


def test_file_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("scheduler:\n  admin_token: ${MISSING_TOKEN}\n")
    with pytest.raises(ConfigError, match=r"scheduler.admin_token: \$\{MISSING_TOKEN\} is not set"):
        load_config(file)
    file.write_text("services:\n  probe:\n    interval: [oops\n")
    with pytest.raises(ConfigError, match=r"c.yaml line \d+: not valid YAML"):
        load_config(file)
    file.write_text("services:\n  extra:\n    type: nonsense\n")
    with pytest.raises(ConfigError, match=r"services\.extra: unknown scheduler 'nonsense'; valid names:"):
        load_config(file)
    file.write_text("services:\n  probe:\n    intervall: '@hourly'\n")
    with pytest.raises(ConfigError, match=r"services\.probe\.intervall in .*: unknown setting"):
        load_config(file)
    file.write_text("services:\n  probe:\n    timeout: -5s\n")
    with pytest.raises(ConfigError, match=r"services\.probe\.timeout in"):
        load_config(file)
    file.write_text("services:\n  Probe_EU:\n    type: probe\n")
    with pytest.raises(ConfigError, match="instance names use lower-case letters"):
        load_config(file)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    monkeypatch.setenv("SCHEDULER_PLUGINS", "no.such.module")
    with pytest.raises(ConfigError, match=r"SCHEDULER_PLUGINS: cannot import 'no\.such\.module'"):
        load_config()


def test_interpolation_rules() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert interpolate({"x": "${A}-${B:-two}-$$-${EMPTY:-d}"}, env) == {"x": "1-two-$-d"}
    assert interpolate([1, True, None], env) == [1, True, None]


def test_secrets_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:hunter2@db.internal:5432/app")
    monkeypatch.setenv("SCHEDULER_ADMIN_TOKEN", "tok-very-secret")
    shown = str(redacted(load_config()))
    assert "hunter2" not in shown and "tok-very-secret" not in shown
    assert "db.internal" in shown and "***" in shown
    monkeypatch.setenv("SCHEDULER_HTTP_PORT", "not-a-port")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "hunter2" not in str(info.value)


def test_duration_formatting_round_trips() -> None:
    for text in ("1500ms", "30s", "5m", "2h", "3d"):
        config = ServiceConfig.model_validate({"retry_delay": text})
        assert format_duration(config.retry_delay) == text


def test_storage_section_in_the_seeds_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "ha.yaml"
    file.write_text(
        "scheduler:\n"
        "  storage:\n"
        "    driver: postgresql\n"
        "    connection:\n"
        "      host: db.example\n"
        "      database: visor\n"
        "      user: visor\n"
        "      password: ${DB_PASSWORD}\n"
        "      pool: {min: 0, max: 4}\n"
        "  ha:\n"
        "    enabled: true\n"
        "    node_id: node-1\n"
        "    lock_ttl: 30\n"
        "    heartbeat_interval: 5\n"
    )
    monkeypatch.setenv("DB_PASSWORD", "p@ss/word")
    monkeypatch.setenv("DATABASE_PORT", "6543")  # env refines the file
    config = load_config(file)
    assert config.storage.url() == "postgresql://visor:p%40ss%2Fword@db.example:6543/visor"
    assert config.storage.pool.max == 4
    assert config.platform.node_id == "node-1"
    assert config.platform.scheduler_lock_ttl == timedelta(seconds=30)
    assert "p@ss" not in str(redacted(config)) and "p%40ss" not in str(redacted(config))
    monkeypatch.setenv("DATABASE_PORT", "lots")
    with pytest.raises(ConfigError, match=r"^DATABASE_PORT"):
        load_config(file)


def test_heartbeat_must_be_well_below_the_lock_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_LOCK_TTL", "10s")
    monkeypatch.setenv("SCHEDULER_HEARTBEAT_INTERVAL", "5s")
    expected = r"SCHEDULER_HEARTBEAT_INTERVAL \(5s\) must be .* a third of SCHEDULER_LOCK_TTL"
    with pytest.raises(ConfigError, match=expected):
        load_config()
