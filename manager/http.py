"""The admin HTTP app: probes, Prometheus metrics, scheduler health, the admin API and its OpenAPI document."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from manager import dashboard, jobs_api
from manager.manager import SchedulerManager
from manager.metrics import SchedulerMetrics
from manager.openapi import OPENAPI
from manager.params import query_int
from services.base import BaseSchedulerService, RunInProgress, ServiceError
from services.registry import UnknownService
from services.runs import RunStore
from services.status import InvalidTransition

ACTIONS = ("start", "stop", "pause", "resume", "trigger", "startAll", "stopAll")
READY_CACHE_SECONDS = 2.0
READY_PING_TIMEOUT = 1.0  # a partitioned database hangs statements; readiness must still answer
MAX_PAGE = 500


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"success": False, "error": message, **extra}, status_code=status)


class AdminApp:
    """Request handlers around one manager. Construct with `create_app`."""

    def __init__(
        self,
        manager: SchedulerManager,
        metrics: SchedulerMetrics,
        store: RunStore,
        *,
        admin_token: str | None,
        ping: Callable[[], Awaitable[None]],
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.store = store
        self.admin_token = admin_token
        self.ping = ping
        self._ready_at = 0.0
        self._ready: tuple[bool, str] = (False, "not checked yet")

    # ------------------------------------------------------------------ probes

    async def livez(self, request: Request) -> Response:
        # Answering at all proves the event loop is alive; never touch the database here.
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.manager.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not self.manager.started:
            return JSONResponse({"status": "starting"}, status_code=503)
        now = time.monotonic()
        if now - self._ready_at > READY_CACHE_SECONDS:
            self._ready_at = now  # one ping per period: requests during a slow ping get the last answer
            try:
                with anyio.fail_after(READY_PING_TIMEOUT):
                    await self.ping()
                self._ready = (True, "ok")
            except TimeoutError:
                self._ready = (False, f"database did not answer within {READY_PING_TIMEOUT:g}s")
            except Exception as exc:
                self._ready = (False, f"database unreachable: {type(exc).__name__}")
        ok, reason = self._ready
        return JSONResponse({"status": "ready" if ok else "not ready", "reason": reason},
                            status_code=200 if ok else 503)

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(OPENAPI)

    # ------------------------------------------------------------------ reads

    async def health(self, request: Request) -> Response:
        try:
            body = self.manager.health()
        except Exception:
            body = {"healthy": False, "status": "error", "timestamp": _now(),
                    "error": "Failed to get scheduler health status"}
            return Response(status_code=500) if request.method == "HEAD" else JSONResponse(body, status_code=500)
        code = 200 if body["healthy"] else 503
        return Response(status_code=code) if request.method == "HEAD" else JSONResponse(body, status_code=code)

    def describe(self, service: BaseSchedulerService) -> dict[str, Any]:
        registration = self.manager.get(service.name)
        return {
            "id": service.name,
            "name": service.display_name,
            "type": service.type_name,
            "status": service.status.value,
            "statusReason": service.status_reason or registration.gave_up,
            "schedule": {"expression": service.config.interval, "timezone": service.config.timezone,
                         "description": service.schedule.describe()},
            "config": service.config.model_dump(mode="json"),
            "metrics": service.metrics.to_json(service.status),
            "nextRuns": [t.isoformat().replace("+00:00", "Z") for t in service.next_runs(3)]
            if service.status.value == "RUNNING" else [],
            "currentRunId": service.current_run_id,
            "restarts": registration.restarts,
        }

    async def list_schedulers(self, request: Request) -> Response:
        return JSONResponse({
            "success": True,
            "data": {
                "health": self.manager.health(),
                "schedulers": [self.describe(service) for service in self.manager.services],
                "timestamp": _now(),
            },
        })

    async def get_scheduler(self, request: Request) -> Response:
        service = self._service(request)
        return JSONResponse({"success": True, "data": self.describe(service)})

    async def list_runs(self, request: Request) -> Response:
        service = self._service(request)
        limit = query_int(request, "limit", 50, 1, MAX_PAGE)
        offset = query_int(request, "offset", 0, 0, 10**9)
        records, total = await self.store.list_runs(service.name, limit=limit, offset=offset)
        return JSONResponse({
            "success": True,
            "data": {"runs": [record.to_json() for record in records], "total": total, "limit": limit,
                     "offset": offset},
        })

    async def get_run(self, request: Request) -> Response:
        service = self._service(request)
        record = await self.store.get_run(request.path_params["run_id"])
        if record is None or record.scheduler != service.name:
            return error(404, f"no run {request.path_params['run_id']!r} for scheduler {service.name!r}")
        return JSONResponse({"success": True, "data": record.to_json()})

    # ------------------------------------------------------------------ writes

    async def action(self, request: Request) -> Response:
        denied = self._authorize(request)
        if denied is not None:
            return denied
        body = await self._json_body(request)
        if isinstance(body, Response):
            return body
        action = body.get("action")
        if action not in ACTIONS:
            return error(400, f"unknown action {action!r}; valid actions: {', '.join(ACTIONS)}")
        if action == "startAll":
            await self.manager.start_all()
            return self._done(action)
        if action == "stopAll":
            await self.manager.stop_all()
            return self._done(action)
        name = body.get("schedulerId")
        if not isinstance(name, str) or not name:
            return error(400, f"schedulerId is required for action {action!r}")
        try:
            if action == "trigger":
                run_id = await self.manager.trigger(name)
                return JSONResponse(
                    {"success": True, "message": f"Run of '{name}' started", "runId": run_id,
                     "links": {"run": f"/api/admin/schedulers/{name}/runs/{run_id}"}, "timestamp": _now()},
                    status_code=202,
                )
            operation = {"start": self.manager.start, "stop": self.manager.stop,
                         "pause": self.manager.pause, "resume": self.manager.resume}[action]
            await operation(name)
        except UnknownService as exc:
            return error(404, str(exc))
        except RunInProgress as exc:
            return error(409, str(exc), runId=exc.run_id)
        except (ServiceError, InvalidTransition) as exc:
            return error(409, str(exc))
        return self._done(action, name)

    async def update(self, request: Request) -> Response:
        denied = self._authorize(request)
        if denied is not None:
            return denied
        service = self._service(request)
        body = await self._json_body(request)
        if isinstance(body, Response):
            return body
        try:
            await service.update_config(body)
        except ValueError as exc:
            return error(400, _one_line(exc))
        return JSONResponse({"success": True, "data": self.describe(service)})

    # ------------------------------------------------------------------ helpers

    def _done(self, action: str, name: str | None = None) -> Response:
        data: dict[str, Any] = {"success": True, "message": f"Action '{action}' completed successfully",
                                "timestamp": _now()}
        if name is not None:
            data["scheduler"] = self.describe(self.manager.get(name).service)
        return JSONResponse(data)

    def _authorize(self, request: Request) -> Response | None:
        if not self.admin_token:
            return error(403, "admin actions are disabled: set SCHEDULER_ADMIN_TOKEN to enable them")
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.admin_token.encode()):
            response = error(401, "missing or wrong bearer token (Authorization: Bearer <SCHEDULER_ADMIN_TOKEN>)")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return None

    async def _json_body(self, request: Request) -> dict[str, Any] | Response:
        try:
            body = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return error(400, f"request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return error(400, "request body must be a JSON object")
        return body

    def _service(self, request: Request) -> BaseSchedulerService:
        try:
            return self.manager.get(request.path_params["name"]).service
        except UnknownService as exc:
            raise HTTPException(404, str(exc)) from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, exc.detail)


async def _server_error(request: Request, exc: Exception) -> Response:
    return error(500, "internal error; see the server log")


def create_app(admin: AdminApp, *, node_ttl: float = 60.0) -> Starlette:
    """The whole HTTP app; `node_ttl` (the lease TTL) is how stale a node's heartbeat may be on the dashboard."""
    routes = [
        Route("/livez", admin.livez, methods=["GET", "HEAD"]),
        Route("/readyz", admin.readyz, methods=["GET", "HEAD"]),
        Route("/metrics", admin.metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", admin.openapi, methods=["GET"]),
        Route("/api/admin/schedulers/health", admin.health, methods=["GET", "HEAD"]),
        Route("/api/admin/schedulers", admin.list_schedulers, methods=["GET"]),
        Route("/api/admin/schedulers", admin.action, methods=["POST"]),
        Route("/api/admin/schedulers/{name}", admin.get_scheduler, methods=["GET"]),
        Route("/api/admin/schedulers/{name}", admin.update, methods=["PATCH"]),
        Route("/api/admin/schedulers/{name}/runs", admin.list_runs, methods=["GET"]),
        Route("/api/admin/schedulers/{name}/runs/{run_id}", admin.get_run, methods=["GET"]),
        *jobs_api.routes(admin.store.engine, admin_token=admin.admin_token),  # /v1: HTTP cron jobs
        *dashboard.routes(admin.manager, admin.store, node_ttl=node_ttl),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
