"""Shared set-up of the operator tests: a config file that runs only the test's own probe instances."""

from __future__ import annotations

from pathlib import Path

from services.registry import BUILTIN_MODULES, service_types


def probe_config(tmp_path: Path, services: dict[str, str], *, extra: str = "") -> Path:
    """A YAML config with the named `probe` instances (name -> interval) and every other registered type
    disabled (pipeline services included, whatever exists today), so outputs hold exactly what a test set up."""
    import tests.support.services  # noqa: F401  (registers `probe`)

    lines = ["services:"]
    for name, cls in service_types().items():
        if cls.__module__ in BUILTIN_MODULES:  # plugins another test loaded into this process are not ours
            lines += [f"  {name}:", "    enabled: false"]
    for name, interval in services.items():
        lines += [f"  {name}:", "    type: probe", f"    interval: '{interval}'"]
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path
