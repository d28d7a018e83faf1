"""Service types for tests and benchmarks (loaded with SCHEDULER_PLUGINS=tests.support.services)."""

from __future__ import annotations

import os
from datetime import timedelta

import anyio

from services.base import BaseSchedulerService, RunContext
from services.config import Seconds, ServiceConfig
from services.registry import register


class ProbeConfig(ServiceConfig):
    interval: str = "@every 1s"
    duration: Seconds = timedelta(0)  # how long each run takes
    fail: bool = False  # every run raises
    marker_dir: str = ""  # when set, each run touches <dir>/<run_id> (lets process tests see runs start)


@register
class ProbeService(BaseSchedulerService):
    """Sleeps `duration`, then succeeds or fails; used to test scheduling, not work."""

    type_name = "probe"
    display_name = "Probe"
    description = "Test service: sleeps for `duration`, optionally fails."
    config_class = ProbeConfig

    async def run_once(self, ctx: RunContext) -> None:
        assert isinstance(self.config, ProbeConfig)
        if self.config.marker_dir:
            await anyio.Path(os.path.join(self.config.marker_dir, ctx.run_id)).write_text(ctx.scheduled_for.isoformat())
        await anyio.sleep(self.config.duration.total_seconds())
        ctx.add_items(1)
        if self.config.fail:
            raise RuntimeError("probe configured to fail")
