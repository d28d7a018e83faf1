"""`chaos-recorder`: the service type of the chaos soak (`bench.chaos`), loaded with SCHEDULER_PLUGINS.

Every run appends two lines to its process's own journal, ``<log_dir>/<node>-<pid>.csv``:

    start,<service>,<scheduled_for>,<attempt>,<run_id>,<fencing_token>,<at>,,<node>,<pid>
    end,<service>,<scheduled_for>,<attempt>,<run_id>,<fencing_token>,<at>,<outcome>,<node>,<pid>

``at`` is the machine's wall clock (`datetime.now(UTC)`), the one clock every process on the machine and the
harness's kill times share exactly, so journal lines of different processes can be ordered and compared
with zero tolerance (the scheduling clock carries a per-process correction of a few ms).

The ``end`` line is the run's *effect*: the write a well-behaved service makes only while
``ctx.still_owner()``, carrying ``ctx.fencing_token``; the audit checks that these tokens never go backwards
for a service (a write under a superseded lease would). A run killed with ``kill -9`` leaves a ``start``
without an ``end``; the audit ends it at the kill.

Why a file per process, written with one ``os.write`` per line on an ``O_APPEND`` descriptor: a killed process
must not lose lines sitting in a user-space buffer (the kernel keeps what was written), and lines of
different processes never interleave. At a handful of runs per second the unbuffered writes cost nothing.

``duration`` makes runs last (a duration longer than the interval exercises skip-on-overlap and gives the
kills something in flight to hit); ``fail_rate`` makes that fraction of attempts raise, to exercise retries.
"""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta

import anyio

from services.base import BaseSchedulerService, RunContext
from services.config import Milliseconds, ServiceConfig
from services.registry import register

FIELDS = ("kind", "service", "scheduled_for", "attempt", "run_id", "token", "at", "outcome", "node", "pid")


class ChaosConfig(ServiceConfig):
    interval: str = "@every 1s"
    duration: Milliseconds = timedelta(0)
    fail_rate: float = 0.0  # fraction of attempts that raise
    log_dir: str = ""  # empty: journal nothing
    max_retries: int = 2
    retry_delay: Milliseconds = timedelta(milliseconds=200)
    retry_backoff: float = 1.0
    failure_threshold: int = 1_000_000  # the soak measures coordination, not the ERROR state


class InjectedFailure(RuntimeError):
    """The failure `fail_rate` asks for; nothing is wrong."""


class _Journal:
    """One O_APPEND descriptor per process and directory."""

    fds: dict[str, int] = {}

    @classmethod
    def write(cls, directory: str, node: str, fields: list[str]) -> None:
        fd = cls.fds.get(directory)
        if fd is None:
            path = os.path.join(directory, f"{node}-{os.getpid()}.csv")
            fd = cls.fds[directory] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, (",".join(fields) + "\n").encode())


def _iso(moment: datetime) -> str:
    return moment.isoformat()


@register
class ChaosRecorder(BaseSchedulerService):
    type_name = "chaos-recorder"
    display_name = "Chaos recorder"
    description = "Benchmark service: journals each run's start and end with its fencing token; may fail or last."
    config_class = ChaosConfig

    def _journal(self, ctx: RunContext, kind: str, outcome: str = "") -> None:
        assert isinstance(self.config, ChaosConfig)
        if not self.config.log_dir:
            return
        token = ctx.fencing_token
        _Journal.write(
            self.config.log_dir,
            self.store.node,
            [
                kind,
                ctx.service,
                _iso(ctx.scheduled_for),
                str(ctx.attempt),
                ctx.run_id,
                "" if token is None else str(token),
                _iso(datetime.now(UTC)),
                outcome,
                self.store.node,
                str(os.getpid()),
            ],
        )

    async def run_once(self, ctx: RunContext) -> None:
        assert isinstance(self.config, ChaosConfig)
        self._journal(ctx, "start")
        await anyio.sleep(self.config.duration.total_seconds())
        failing = random.random() < self.config.fail_rate  # a test's dice, not security
        if ctx.still_owner():  # the effect: only while the lease is still ours, carrying its token
            self._journal(ctx, "end", "failed" if failing else "succeeded")
        if failing:
            raise InjectedFailure(f"injected failure (fail_rate {self.config.fail_rate:g})")
        ctx.add_items(1)
