"""Headless Chromium for the dashboard test: Debian's `chromium` package driven by Playwright's Python package.

Playwright never downloads a browser here (`playwright install` fetches builds from outside the package
registries, which this project cannot reach); it is pointed at `/usr/bin/chromium` instead. When that is
missing, `ensure_chromium()` installs it with apt-get if we are root; otherwise the test is skipped with the
reason, except under CI=true, where a missing browser is a failure (a skipped browser test would hide a broken
dashboard). Run `python -m tests.operator.browser` to install it by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_APT_TIMEOUT = 900  # seconds; a cold apt-get update + install of chromium and its libraries


class BrowserUnavailable(RuntimeError):
    """Chromium or Playwright is missing and cannot be installed here; the message says why."""


def _install_chromium() -> None:
    if shutil.which("apt-get") is None:
        raise BrowserUnavailable(f"{CHROMIUM} is missing and apt-get is not available to install it")
    if os.geteuid() != 0:
        raise BrowserUnavailable(f"{CHROMIUM} is missing; install it as root with: apt-get install -y chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=_APT_TIMEOUT, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise BrowserUnavailable(f"`{' '.join(command)}` failed ({done.returncode}): {' / '.join(tail)}")
    if not CHROMIUM.exists():
        raise BrowserUnavailable(f"apt-get installed chromium but {CHROMIUM} does not exist")


def ensure_chromium() -> Path:
    """The browser's path, installing Debian's chromium when missing (raises BrowserUnavailable)."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        raise BrowserUnavailable("the playwright package is not installed (pip install playwright)") from None
    if not CHROMIUM.exists():
        _install_chromium()
    return CHROMIUM


def require_chromium() -> Path:
    """For a test: the browser's path; skip with the reason, or fail under CI=true."""
    try:
        return ensure_chromium()
    except BrowserUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser test cannot run under CI=true: {exc}")
        pytest.skip(str(exc))


if __name__ == "__main__":
    try:
        print(ensure_chromium())
    except BrowserUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
