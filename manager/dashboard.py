"""The operator's dashboard: one static page at `/` and the two read-only JSON views it needs.

The page (manager/static/) is plain HTML, CSS and JavaScript, no build step. It reads the fleet from the
database through `GET /api/admin/fleet` (the same model as `python -m manager status`, so it shows every
replica on every node) and run history through `GET /api/admin/runs` (newest first, paginated, optionally one
service), and acts through the existing `POST /api/admin/schedulers` with the bearer token the operator typed
(kept in the browser's sessionStorage only). Reads need no token, like the admin API's other reads: they
expose no secrets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from manager import status
from manager.config import ServiceSpec
from manager.manager import SchedulerManager
from manager.params import query_int
from services.runs import RunRecord, RunStore
from storage.schema import runs

STATIC = Path(__file__).parent / "static"
MAX_PAGE = 500
_NO_CACHE = {"Cache-Control": "no-cache"}


class Dashboard:
    """Handlers around the process's manager (for the configured services) and the run store (for the rest)."""

    def __init__(self, manager: SchedulerManager, store: RunStore, *, node_ttl: float) -> None:
        self.manager = manager
        self.store = store
        self.node_ttl = node_ttl

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=_NO_CACHE)

    async def fleet(self, request: Request) -> Response:
        specs = [ServiceSpec(name=s.name, type_name=s.type_name, config=s.configured) for s in self.manager.services]
        snapshot = await status.read_snapshot(self.store.engine, services=[spec.name for spec in specs])
        fleet = status.build_status(specs, snapshot, node_ttl=self.node_ttl)
        body = fleet.to_json()
        local = {s.name for s in self.manager.services}
        for service in body["services"]:
            # The admin API acts on this process's services; the page disables buttons for the others.
            service["local"] = service["name"] in local
        body["node"] = self.store.node
        return JSONResponse({"success": True, "data": body}, headers=_NO_CACHE)

    async def runs(self, request: Request) -> Response:
        limit = query_int(request, "limit", 25, 1, MAX_PAGE)
        offset = query_int(request, "offset", 0, 0, 10**9)
        scheduler = request.query_params.get("scheduler") or None
        records, total = await recent_runs(self.store, scheduler=scheduler, limit=limit, offset=offset)
        return JSONResponse(
            {
                "success": True,
                "data": {
                    "runs": [r.to_json() for r in records],
                    "total": total,
                    "limit": limit,
                    "offset": offset,
                    "scheduler": scheduler,
                },
            },
            headers=_NO_CACHE,
        )


async def recent_runs(
    store: RunStore, *, scheduler: str | None, limit: int, offset: int
) -> tuple[list[RunRecord], int]:
    """Runs of every service (or one), newest fire time first; served by the (scheduled_for) and
    (scheduler, scheduled_for, attempt) indexes."""
    where: list[Any] = [] if scheduler is None else [runs.c.scheduler == scheduler]
    async with store.engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(runs).where(*where))).scalar_one()
        rows = (
            await conn.execute(
                select(runs)
                .where(*where)
                .order_by(runs.c.scheduled_for.desc(), runs.c.attempt.desc(), runs.c.id)
                .limit(limit)
                .offset(offset)
            )
        ).mappings()
        return [RunRecord(**row) for row in rows], int(total)


def routes(manager: SchedulerManager, store: RunStore, *, node_ttl: float) -> list[BaseRoute]:
    dashboard = Dashboard(manager, store, node_ttl=node_ttl)
    return [
        Route("/", dashboard.page, methods=["GET", "HEAD"]),
        Route("/api/admin/fleet", dashboard.fleet, methods=["GET"]),
        Route("/api/admin/runs", dashboard.runs, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
