"""`lag-recorder`: a service that writes its own in-run lag to a CSV file, for multi-process benchmarks.

Load it with ``SCHEDULER_PLUGINS=bench.recorder``. Each run appends one line

    scheduler,scheduled_for_iso,lag_seconds,node,wall_lag_seconds

to ``csv_path`` (give every process its own file so lines never interleave). ``lag_seconds`` is the start
of `run_once` minus the scheduled time on the service's own clock (the database-aligned clock the
schedule fires by, as `bench.services.LagProbe` measures it); ``wall_lag_seconds`` is the same on the
machine's plain wall clock (`time.time()`), which is what an in-process scheduler such as APScheduler
measures against. On one machine the two differ only by the measured clock correction (normally 0).

Writes go to a buffered file object: nothing touches the disk during a run except a flush at most once a
second, and the rest is flushed when the process exits (SIGTERM makes the manager exit normally).
"""

from __future__ import annotations

import atexit
import time
from typing import TextIO

from services.base import BaseSchedulerService, RunContext
from services.config import ServiceConfig
from services.registry import register

_FLUSH_EVERY = 1.0  # seconds


class RecorderConfig(ServiceConfig):
    interval: str = "@every 1s"
    csv_path: str = ""  # empty: record nothing


class _Sink:
    """One open CSV file per path and process, shared by every recorder instance writing to it."""

    files: dict[str, TextIO] = {}
    flushed: dict[str, float] = {}

    @classmethod
    def write(cls, path: str, line: str) -> None:
        out = cls.files.get(path)
        if out is None:
            out = cls.files[path] = open(path, "a", buffering=1 << 16)  # noqa: SIM115  closed at exit
            cls.flushed[path] = time.monotonic()
        out.write(line)
        now = time.monotonic()
        if now - cls.flushed[path] >= _FLUSH_EVERY:
            out.flush()
            cls.flushed[path] = now

    @classmethod
    def close_all(cls) -> None:
        for out in cls.files.values():
            out.close()
        cls.files.clear()


atexit.register(_Sink.close_all)


@register
class LagRecorder(BaseSchedulerService):
    type_name = "lag-recorder"
    display_name = "Lag recorder"
    description = "Benchmark service: appends (service, scheduled time, in-run lag, node) to a CSV file."
    config_class = RecorderConfig

    async def run_once(self, ctx: RunContext) -> None:
        wall = time.time()
        now = ctx.clock.now()
        assert isinstance(self.config, RecorderConfig)
        if not self.config.csv_path:
            return
        lag = (now - ctx.scheduled_for).total_seconds()
        wall_lag = wall - ctx.scheduled_for.timestamp()
        _Sink.write(self.config.csv_path,
                    f"{ctx.service},{ctx.scheduled_for.isoformat()},{lag:.6f},{self.store.node},{wall_lag:.6f}\n")
