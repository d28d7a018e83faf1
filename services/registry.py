"""Service types by name. Built-in services register themselves when their module is imported."""

from __future__ import annotations

import importlib
from typing import TypeVar

from services.base import BaseSchedulerService

# Modules holding the built-in services; imported on first lookup so `import services` stays light.
BUILTIN_MODULES = (
    "services.retention",
    "services.csv_import",
    "services.import_processing",
    "services.session_processing",
    "services.batch_processing",
    "services.backup",
    "services.http_jobs",
)

_types: dict[str, type[BaseSchedulerService]] = {}
_loaded = False

S = TypeVar("S", bound=type[BaseSchedulerService])


class UnknownService(LookupError):
    def __init__(self, name: str, valid: list[str]) -> None:
        super().__init__(f"unknown scheduler {name!r}; valid names: {', '.join(valid) or '(none)'}")
        self.name = name
        self.valid = valid


def register(cls: S) -> S:
    """Class decorator: make a service type available under its `type_name`."""
    existing = _types.get(cls.type_name)
    if existing is not None and existing is not cls:
        raise ValueError(f"service type {cls.type_name!r} is already registered by {existing.__qualname__}")
    _types[cls.type_name] = cls
    return cls


def service_types() -> dict[str, type[BaseSchedulerService]]:
    global _loaded
    if not _loaded:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        _loaded = True
    return dict(sorted(_types.items()))


def get_type(name: str) -> type[BaseSchedulerService]:
    types = service_types()
    if name not in types:
        raise UnknownService(name, list(types))
    return types[name]
