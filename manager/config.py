"""Configuration: platform settings and service instances, from env vars and an optional YAML file.

Precedence: env var > YAML file > default. Platform settings use the names in the README
(`SCHEDULER_*`, `DATABASE_URL`, `LOG_FORMAT`); each service instance reads `<NAME>_<FIELD>` where NAME is
the instance name in upper snake case (`csv-import` -> `CSV_IMPORT_INTERVAL`, `CSV_IMPORT_TIMEOUT`, ...).

The YAML file looks like::

    scheduler:            # platform settings without their SCHEDULER_ prefix
      http_port: 8080
      admin_token: ${SCHEDULER_ADMIN_TOKEN}
    database_url: ${DATABASE_URL:-sqlite:///./var/scheduler.db}
    services:
      run-history-retention:
        max_age: 14d
      retention-fast:     # a second instance of a type, with its own settings and env prefix
        type: run-history-retention
        interval: "@every 10m"
"""

from __future__ import annotations

import importlib
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from services.config import Seconds, ServiceConfig, format_duration
from services.registry import UnknownService, get_type, service_types
from storage.errors import StorageConfigError
from storage.settings import StorageSettings, load_storage_settings


class ConfigError(ValueError):
    """Bad configuration. The message is one line naming the variable (or file key) and what it expected."""


class PlatformSettings(BaseSettings):
    """Process-wide settings. Field names are the env var names, lower-cased."""

    model_config = SettingsConfigDict(extra="forbid", case_sensitive=False, env_ignore_empty=True)

    scheduler_enabled: bool = True
    scheduler_auto_restart: bool = True
    scheduler_max_restarts: int = 3
    scheduler_restart_delay: Seconds = timedelta(seconds=5)
    scheduler_instance_id: str | None = None
    scheduler_http_host: str = "127.0.0.1"
    scheduler_http_port: int = 8080
    scheduler_admin_token: SecretStr | None = None
    scheduler_shutdown_grace: Seconds = timedelta(seconds=30)
    scheduler_config_file: Path | None = None
    scheduler_force_update: bool = False
    scheduler_plugins: str = ""  # comma-separated modules that register extra service types
    scheduler_lock_ttl: Seconds = timedelta(seconds=60)
    scheduler_heartbeat_interval: Seconds = timedelta(seconds=15)
    scheduler_clock_offset: Seconds = timedelta(0)  # testing aid: pretend this node's clock is skewed
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)  # env beats the YAML file (passed as init values)

    @field_validator("scheduler_http_port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError("must be a TCP port between 0 and 65535")
        return value

    @model_validator(mode="after")
    def _heartbeat_below_ttl(self) -> PlatformSettings:
        ttl, beat = self.scheduler_lock_ttl, self.scheduler_heartbeat_interval
        if beat <= timedelta(0) or beat * 3 > ttl:
            raise ValueError(
                f"SCHEDULER_HEARTBEAT_INTERVAL ({format_duration(beat)}) must be positive and at most a third of "
                f"SCHEDULER_LOCK_TTL ({format_duration(ttl)}), so a lease survives two missed heartbeats"
            )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @property
    def node_id(self) -> str:
        return self.scheduler_instance_id or f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    type_name: str
    config: ServiceConfig

    @property
    def env_prefix(self) -> str:
        return env_prefix(self.name)


@dataclass(frozen=True)
class Config:
    platform: PlatformSettings
    storage: StorageSettings
    services: list[ServiceSpec]
    source: Path | None
    legacy_state_path: Path | None = None  # the seed's storage.path: a JSON state file imported on first start

    def service(self, name: str) -> ServiceSpec:
        for spec in self.services:
            if spec.name == name:
                return spec
        raise UnknownService(name, [spec.name for spec in self.services])


def env_prefix(instance: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", instance).upper() + "_"


# Lower case only: MariaDB compares names case-insensitively, so "Digest" and "digest" would collide there.
_INSTANCE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str], where: str = "") -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string of a parsed YAML tree (`$$` is a literal $)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: ${{{name}}} is not set (write ${{{name}:-default}} to give a default)")

    return _VAR.sub(replace, value)


def _read_file(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    import yaml  # only when a file is used

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"SCHEDULER_CONFIG_FILE: {path} does not exist") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{at}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (scheduler:, database_url:, services:)")
    return dict(interpolate(raw, env))


def _explain(exc: ValidationError, names: Mapping[str, str]) -> str:
    """One line for the first error: the variable's name, what it expected and what it got."""
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    message = str(error["msg"]).removeprefix("Value error, ")
    if not field:
        return message  # a rule across fields names its variables itself
    if error["type"] == "extra_forbidden":
        message = "unknown setting"
    given = error.get("input")
    secret = "token" in field or "url" in field or "password" in field
    shown = "" if given is None or isinstance(given, dict) or secret else f" (got {given!r})"
    return f"{names.get(field, field)}: {message}{shown}"


def load_config(config_file: Path | None = None) -> Config:
    """Read and validate everything; raise ConfigError with a one-line message on the first problem."""
    env = dict(os.environ)
    path = config_file or (Path(env["SCHEDULER_CONFIG_FILE"]) if env.get("SCHEDULER_CONFIG_FILE") else None)
    data = _read_file(path, env) if path else {}
    where = str(path) if path else "config"
    _import_plugins(env.get("SCHEDULER_PLUGINS") or (data.get("scheduler") or {}).get("plugins") or "")

    storage, legacy = _load_storage(data, env, where)
    file_platform: dict[str, Any] = {}
    for key, value in (data.get("scheduler") or {}).items():
        if key == "storage":
            continue
        if key == "ha" and isinstance(value, dict):  # the seed's shape: scheduler.ha.{node_id, lock_ttl, ...}
            for ha_key, ha_value in value.items():
                target = {"node_id": "instance_id", "enabled": "ha_enabled"}.get(ha_key, ha_key)
                if target != "ha_enabled":  # coordination is always on; accepted for compatibility
                    file_platform[f"scheduler_{target}"] = ha_value
            continue
        file_platform[f"scheduler_{key}"] = value
    for key, value in data.items():
        if key not in ("scheduler", "services", "storage", "database_url"):
            file_platform[key] = value
    platform_names = {
        name: name.upper() if env.get(name.upper()) or name not in file_platform
        else f"{name.removeprefix('scheduler_') if name.startswith('scheduler_') else name} in {where}"
        for name in PlatformSettings.model_fields
    }
    try:
        platform = PlatformSettings(**file_platform)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, platform_names)) from None

    services = [
        _load_service(name, body, env, where) for name, body in _instances(data.get("services") or {}, where).items()
    ]
    return Config(platform=platform, storage=storage, services=services, source=path, legacy_state_path=legacy)


def _load_storage(data: dict[str, Any], env: Mapping[str, str], where: str) -> tuple[StorageSettings, Path | None]:
    """The seed's `storage:` section (under `scheduler:` or at the top), or the `database_url:` shorthand.

    `storage.path` names the legacy JSON state file that is imported on first start.
    """
    section = (data.get("scheduler") or {}).get("storage") or data.get("storage")
    legacy: Path | None = None
    if isinstance(section, dict) and "path" in section:
        section = dict(section)
        raw = section.pop("path")
        if raw is not None and not isinstance(raw, str):
            raise ConfigError(f"storage.path in {where}: expected the path of a JSON state file")
        legacy = Path(raw) if raw else None
    if section is None and data.get("database_url"):
        section = {"connection": {"connection_string": data["database_url"]}}
    try:
        return load_storage_settings(section or None, env, where), legacy
    except StorageConfigError as exc:
        raise ConfigError(str(exc)) from None


def _import_plugins(modules: str | list[str]) -> None:
    """Import the modules that register user-defined service types (SCHEDULER_PLUGINS=pkg.mod,other.mod)."""
    names = modules.split(",") if isinstance(modules, str) else modules
    for module in (name.strip() for name in names):
        if not module:
            continue
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"SCHEDULER_PLUGINS: cannot import {module!r}: {exc}") from None


def _instances(section: Any, where: str) -> dict[str, dict[str, Any]]:
    """Every registered type gets a default instance named after it; the file may configure or add more."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: services must be a mapping of instance name to settings")
    instances: dict[str, dict[str, Any]] = {name: {"type": name} for name in service_types()}
    for name, body in section.items():
        if not isinstance(name, str) or not _INSTANCE_NAME.match(name):
            raise ConfigError(
                f"{where}: services.{name}: instance names use lower-case letters, digits and '-' "
                "(at most 100 characters, starting with a letter or digit)"
            )
        body = dict(body or {})
        body.setdefault("type", name)
        if not isinstance(body["type"], str):
            raise ConfigError(f"{where}: services.{name}.type must be a scheduler type name")
        instances[str(name)] = body
    return instances


def _load_service(name: str, body: dict[str, Any], env: Mapping[str, str], where: str) -> ServiceSpec:
    type_name = body.pop("type")
    try:
        cls = get_type(type_name)
    except UnknownService as exc:
        raise ConfigError(f"{where}: services.{name}: {exc}") from None
    prefix = env_prefix(name)
    values = dict(body)
    names = {field: f"services.{name}.{field} in {where}" for field in values}
    for field in cls.config_class.model_fields:
        variable = prefix + field.upper()
        if env.get(variable, "") != "":
            values[field] = env[variable]
            names[field] = variable
    for field in cls.config_class.model_fields:
        names.setdefault(field, prefix + field.upper())
    try:
        config = cls.config_class.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, names)) from None
    return ServiceSpec(name=name, type_name=type_name, config=config)


def redacted(config: Config) -> dict[str, Any]:
    """The effective configuration with secrets hidden, for `--check-config` and the admin API."""
    platform = config.platform.model_dump(mode="json")
    platform["database_url"] = config.storage.redacted_url()
    platform["database_driver"] = config.storage.driver
    platform["database_pool_max"] = config.storage.pool.max
    platform["scheduler_admin_token"] = "***" if config.platform.scheduler_admin_token else None
    platform["node_id"] = config.platform.node_id
    return {
        "source": str(config.source) if config.source else None,
        "platform": platform,
        "services": {
            spec.name: {"type": spec.type_name, **spec.config.model_dump(mode="json")} for spec in config.services
        },
    }
