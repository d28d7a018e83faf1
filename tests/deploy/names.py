"""What the code calls things: scheduler names, the settings it reads, its HTTP routes and its metric names.

The deployment files are checked against these, read from the code itself, so a renamed setting, route or
metric fails the deployment tests instead of a deployment.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, cast

from prometheus_client import CollectorRegistry

from manager.config import PlatformSettings, env_prefix
from manager.http import AdminApp, create_app
from manager.metrics import SchedulerMetrics
from services import registry
from services.base import BaseSchedulerService
from services.config import ServiceConfig
from storage.settings import ENV_VARS

ROOT = Path(__file__).resolve().parents[2]

# The schedulers the deployment files run, and the module that registers each. The pipeline's services are
# being built while these files are written: until its module exists, a name here counts as known and its
# instance as having the settings every service has (ServiceConfig). Once the module exists, its own config
# class decides. The one place that lists them.
SCHEDULER_MODULES: dict[str, str] = {
    "csv-import": "services.csv_import",
    "import-processing": "services.import_processing",
    "session-processing": "services.session_processing",
    "batch-processing": "services.batch_processing",
    "run-history-retention": "services.retention",
    "database-backup": "services.backup",
}
# The OpenAI settings of the analysis; the module's own field names win once it exists.
OPENAI_MODULE = "domain.analysis.settings"
OPENAI_SETTINGS_PENDING = frozenset({"OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"})
# Variables of the container runtime, not of the schedulers (only allowed in the Dockerfile).
RUNTIME_ENV = frozenset(
    {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}
)


def _import(module: str) -> ModuleType | None:
    """The module, or None while it does not exist yet (any other import error is a real failure)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            return None
        raise


@contextmanager
def pipeline_registered() -> Iterator[None]:
    """Register the pipeline services that exist now, and put the registry back afterwards.

    Their modules are not all in services.registry.BUILTIN_MODULES yet; registering them for the length of a test
    keeps other tests in the same process seeing the registry they expect.
    """
    registry.service_types()  # the built-in modules first, so they are part of what is put back
    saved = dict(registry._types)
    try:
        for name, module_name in SCHEDULER_MODULES.items():
            module = _import(module_name)
            if module is None:
                continue
            for value in vars(module).values():
                if (
                    isinstance(value, type)
                    and issubclass(value, BaseSchedulerService)
                    and getattr(value, "type_name", None) == name
                ):
                    registry._types.setdefault(name, value)
        yield
    finally:
        registry._types.clear()
        registry._types.update(saved)


def known_schedulers() -> set[str]:
    """Registered service types plus the pipeline names being built."""
    return set(registry.service_types()) | set(SCHEDULER_MODULES)


def config_class(scheduler: str) -> type[ServiceConfig]:
    """The scheduler's config class (call inside pipeline_registered); ServiceConfig while it is not built."""
    types = registry.service_types()
    return types[scheduler].config_class if scheduler in types else ServiceConfig


def settings_read_by_code() -> dict[str, str]:
    """Every environment variable the code reads, with where it is read (for failure messages)."""
    names: dict[str, str] = {}
    for field in PlatformSettings.model_fields:
        names[field.upper()] = "manager.config.PlatformSettings"
    for variable in ENV_VARS:
        names[variable] = "storage.settings.ENV_VARS"
    openai = _import(OPENAI_MODULE)
    if openai is None:
        names.update(dict.fromkeys(OPENAI_SETTINGS_PENDING, f"{OPENAI_MODULE} (being built)"))
    else:
        settings_class: Any = openai.OpenAISettings
        for field in settings_class.model_fields:
            names[field.upper()] = f"{OPENAI_MODULE}.OpenAISettings"
    for scheduler in known_schedulers():
        cls = config_class(scheduler)
        for field in cls.model_fields:
            names[env_prefix(scheduler) + field.upper()] = f"{cls.__module__}.{cls.__qualname__}"
    return names


def unknown_settings(variables: set[str]) -> list[str]:
    """The variables no code reads (sorted)."""
    known = settings_read_by_code()
    return sorted(name for name in variables if name not in known)


def http_routes() -> dict[str, set[str]]:
    """Path -> methods of the admin HTTP app (the app is built with a stand-in; routes only name handlers)."""

    class Handlers:
        store = SimpleNamespace(engine=None)  # the /v1 routes bind the engine; nothing is queried here
        admin_token = None

        def __getattr__(self, name: str) -> Any:
            async def handler(request: Any) -> None:  # never called
                raise AssertionError(name)

            return handler

    app = create_app(cast(AdminApp, Handlers()))
    routes: dict[str, set[str]] = {}
    for route in app.routes:
        path = cast(str, getattr(route, "path", ""))
        routes.setdefault(path, set()).update(cast(set[str], getattr(route, "methods", None) or set()))
    return routes


def exported_metric_names() -> set[str]:
    """Sample names `manager.metrics` exports: counters as *_total, histograms as *_bucket/_sum/_count."""
    registry_ = CollectorRegistry()
    SchedulerMetrics(registry_)
    names: set[str] = set()
    for family in registry_.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names
