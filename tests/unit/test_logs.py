"""Log lines carry the service and run id, as text on a terminal and as JSON lines."""

from __future__ import annotations

import json
import logging

import pytest

from manager.logs import JsonFormatter, TextFormatter
from services.base import RunLogger


def record(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    log = RunLogger(logging.getLogger("services.demo"), {"service": "demo", "run_id": "r-1"})
    with caplog.at_level(logging.INFO):
        log.info("run %s", "succeeded")
    return caplog.records[-1]


def test_json_lines_carry_service_and_run_id(caplog: pytest.LogCaptureFixture) -> None:
    entry = json.loads(JsonFormatter().format(record(caplog)))
    assert entry["message"] == "run succeeded"
    assert (entry["service"], entry["run_id"], entry["level"]) == ("demo", "r-1", "info")
    assert entry["ts"].endswith("Z")


def test_text_lines_carry_service_and_run_id(caplog: pytest.LogCaptureFixture) -> None:
    line = TextFormatter().format(record(caplog))
    assert line.endswith("services.demo: run succeeded [service=demo run_id=r-1]")
