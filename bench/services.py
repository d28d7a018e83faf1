"""A service that records its own lag inside the run, for punctuality benchmarks."""

from __future__ import annotations

from typing import ClassVar

from services.base import BaseSchedulerService, RunContext
from services.config import ServiceConfig
from services.registry import register


@register
class LagProbe(BaseSchedulerService):
    type_name = "lag-probe"
    display_name = "Lag probe"
    description = "Benchmark service: records (service, start - scheduled time) and returns."
    config_class = ServiceConfig
    samples: ClassVar[list[tuple[str, float]]] = []

    async def run_once(self, ctx: RunContext) -> None:
        self.samples.append((ctx.service, (ctx.clock.now() - ctx.scheduled_for).total_seconds()))
