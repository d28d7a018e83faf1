"""Real `python -m runner` / `python -m manager` processes for tests, with their logs kept for failures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(**values: str) -> dict[str, str]:
    """The test's environment without any scheduler settings of the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEDULER_", "PROBE_", "DATABASE_"))}
    env.update({"PYTHONPATH": str(ROOT), "SCHEDULER_PLUGINS": "tests.support.services", **values})
    return env


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], port: int, tmp: Path, name: str = "") -> None:
        self.port = port
        self.name = name or str(port)
        self.log = tmp / f"proc-{self.name}.log"
        with open(self.log, "w") as log:  # the child keeps its own copy of the descriptor
            self.popen = subprocess.Popen(
                [sys.executable, "-m", *args, "--port", str(port)], env=env, cwd=tmp,
                stdout=subprocess.DEVNULL, stderr=log, text=True,
            )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.popen.returncode}: {self.log.read_text()}")
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not ready after {timeout}s: {self.log.read_text()}")

    def wait_exit(self, timeout: float = 30) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise AssertionError(f"{self.name} still running after {timeout}s: {self.log.read_text()}") from None

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self.http.close()


def poll(check: object, timeout: float, what: str, interval: float = 0.1) -> object:
    """Call `check()` until it returns something truthy; fail after `timeout` seconds (sync tests)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()  # type: ignore[operator]
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
