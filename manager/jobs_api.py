"""The HTTP-jobs API under ``/v1``: projects, client credentials, jobs and execution logs (JSON, OpenAPI).

Mount it into the admin app with ``*jobs_api.routes(engine, admin_token=token)``. Authentication:

* ``Authorization: Bearer <SCHEDULER_ADMIN_TOKEN>``: the admin; manages projects and credentials, sees all;
* ``x-api-key`` + ``x-secret-key``: a client of one project; sees and changes only that project's jobs,
  logs and project record (another project's rows answer 404, as if they did not exist).

Errors are ``{"success": false, "error": "...", "errors": [{"field": ..., "message": ...}]}``: 400 malformed
JSON, 401 missing/wrong credentials, 403 not allowed for these credentials, 404, 409 name taken, 422
validation (the field is named, e.g. ``[3].spec``; a bad spec or timezone is a 422, never a 500).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from jobs import store
from jobs.model import (
    MAX_BATCH,
    FieldError,
    JobIn,
    JobPatch,
    NextFire,
    ProjectIn,
    ProjectPatch,
    ScheduleCheck,
    check_schedule,
    parse_jobs,
    parse_model,
)
from jobs.targets import TargetPolicy, TargetRefused
from services.http_jobs import check_schedule as platform_check
from services.http_jobs import next_fire as platform_next_fire

log = logging.getLogger(__name__)
MAX_PAGE = 1000
MAX_BODY = 8 * 1024 * 1024

Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    def __init__(self, status: int, message: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.errors = errors


@dataclass(frozen=True)
class Caller:
    project: str | None  # None = the admin

    @property
    def admin(self) -> bool:
        return self.project is None


def _ok(data: Any, status: int = 200, **extra: Any) -> JSONResponse:
    return JSONResponse({"success": True, "data": data, **extra}, status_code=status)


def _fail(status: int, message: str, errors: list[dict[str, str]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"success": False, "error": message}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status)


def _guard(fn: Handler) -> Handler:
    """Turn domain errors into JSON answers; anything else is logged and answered 500 without details."""

    @functools.wraps(fn)
    async def wrapper(request: Request) -> Response:
        try:
            if any("\x00" in str(v) for v in request.path_params.values()):
                raise store.NotFound("not found")
            return await fn(request)
        except ApiError as exc:
            response = _fail(exc.status, str(exc), exc.errors)
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            return response
        except FieldError as exc:
            return _fail(422, str(exc), exc.errors)
        except store.NotFound as exc:
            return _fail(404, str(exc))
        except store.Conflict as exc:
            return _fail(409, str(exc))
        except Exception:
            log.exception("jobs API: %s %s failed", request.method, request.url.path)
            return _fail(500, "internal error; see the server log")

    return wrapper


class JobsApi:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        admin_token: str | None,
        next_fire: NextFire,
        check: ScheduleCheck,
        policy: TargetPolicy | None,
    ) -> None:
        self.engine = engine
        self.admin_token = admin_token
        self.next_fire = next_fire
        self.check = check
        self.policy = policy

    # ------------------------------------------------------------------ helpers

    async def caller(self, request: Request) -> Caller:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if (
                self.admin_token
                and scheme.lower() == "bearer"
                and hmac.compare_digest(token.encode(), self.admin_token.encode())
            ):
                return Caller(None)
            raise ApiError(401, "wrong bearer token")
        key, secret = request.headers.get("x-api-key"), request.headers.get("x-secret-key")
        if not key or not secret:
            raise ApiError(401, "send x-api-key and x-secret-key (or the admin bearer token)")
        project = await store.authenticate(self.engine, key, secret)
        if project is None:
            raise ApiError(401, "unknown or revoked api key, or wrong secret")
        return Caller(project)

    async def admin(self, request: Request) -> Caller:
        who = await self.caller(request)
        if not who.admin:
            raise ApiError(403, "this action needs the admin token")
        return who

    @staticmethod
    async def body(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
        try:
            value = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        if "\\u0000" in raw.decode("utf-8", "replace"):
            raise FieldError([{"field": "body", "message": "strings must not contain NUL characters"}])
        return value

    @staticmethod
    def page(request: Request) -> tuple[int, int]:
        return _int(request, "limit", 100, 1, MAX_PAGE), _int(request, "offset", 0, 0, 10**9)

    def check_target(self, url: str, field: str) -> None:
        if self.policy is not None:
            try:
                self.policy.check_url(url)
            except TargetRefused as exc:
                raise FieldError([{"field": field, "message": str(exc)}]) from None

    # ------------------------------------------------------------------ endpoints

    async def healthcheck(self, request: Request) -> Response:
        return _ok({"status": "ok"})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def create_project(self, request: Request) -> Response:
        await self.admin(request)
        body = parse_model(ProjectIn, await self.body(request))
        return _ok(await store.create_project(self.engine, body), 201)

    async def list_projects(self, request: Request) -> Response:
        who = await self.caller(request)
        limit, offset = self.page(request)
        rows, total = await store.list_projects(self.engine, who.project, limit, offset)
        return _ok(rows, total=total, limit=limit, offset=offset)

    async def get_project(self, request: Request) -> Response:
        who = await self.caller(request)
        return _ok(await store.get_project(self.engine, who.project, request.path_params["project_id"]))

    async def update_project(self, request: Request) -> Response:
        who = await self.caller(request)
        body = parse_model(ProjectPatch, await self.body(request))
        return _ok(await store.update_project(self.engine, who.project, request.path_params["project_id"], body))

    async def delete_project(self, request: Request) -> Response:
        await self.admin(request)
        await store.delete_project(self.engine, None, request.path_params["project_id"])
        return Response(status_code=204)

    async def create_credential(self, request: Request) -> Response:
        await self.admin(request)
        return _ok(await store.create_credential(self.engine, request.path_params["project_id"]), 201)

    async def list_credentials(self, request: Request) -> Response:
        await self.admin(request)
        return _ok(await store.list_credentials(self.engine, request.path_params["project_id"]))

    async def revoke_credential(self, request: Request) -> Response:
        await self.admin(request)
        return _ok(await store.revoke_credential(self.engine, request.path_params["credential_id"]))

    async def project_executions(self, request: Request) -> Response:
        who = await self.caller(request)
        limit, offset = self.page(request)
        rows, total = await store.list_executions(
            self.engine, who.project, project_id=request.path_params["project_id"], limit=limit, offset=offset
        )
        return _ok(rows, total=total, limit=limit, offset=offset)

    async def create_jobs(self, request: Request) -> Response:
        who = await self.caller(request)
        items, many = parse_jobs(await self.body(request), self.check)
        project = who.project
        for index, item in enumerate(items):
            prefix = f"[{index}]." if many else ""
            self.check_target(item.callback_url, f"{prefix}callback_url")
            if project is None:  # the admin names the project; one project per request
                if item.project_id is None:
                    raise FieldError([{"field": f"{prefix}project_id", "message": "required with the admin token"}])
                project = item.project_id
            if item.project_id is not None and item.project_id != project:
                raise ApiError(403, f"{prefix}project_id is not the project of these credentials")
        assert project is not None
        created = await store.create_jobs(self.engine, project, items, self.next_fire)
        return _ok(created if many else created[0], 201)

    async def list_jobs(self, request: Request) -> Response:
        who = await self.caller(request)
        limit, offset = self.page(request)
        enabled_raw = request.query_params.get("enabled")
        if enabled_raw not in (None, "true", "false"):
            raise FieldError([{"field": "enabled", "message": "must be true or false"}])
        rows, total = await store.list_jobs(
            self.engine,
            who.project,
            limit=limit,
            offset=offset,
            enabled=None if enabled_raw is None else enabled_raw == "true",
            callback_url=request.query_params.get("callback_url"),
        )
        return _ok(rows, total=total, limit=limit, offset=offset)

    async def get_job(self, request: Request) -> Response:
        who = await self.caller(request)
        return _ok(store.to_json(await store.get_job(self.engine, who.project, request.path_params["job_id"])))

    async def update_job(self, request: Request) -> Response:
        who = await self.caller(request)
        patch: JobPatch = parse_model(JobPatch, await self.body(request))
        job_id = request.path_params["job_id"]
        current = await store.get_job(self.engine, who.project, job_id)
        if patch.spec is not None or patch.timezone is not None:
            check_schedule(self.check, patch.spec or current["spec"], patch.timezone or current["timezone"])
        if patch.callback_url is not None:
            self.check_target(patch.callback_url, "callback_url")
        return _ok(await store.update_job(self.engine, who.project, job_id, patch, self.next_fire))

    async def set_enabled(self, request: Request, enabled: bool) -> Response:
        who = await self.caller(request)
        patch = JobPatch(enabled=enabled)
        return _ok(
            await store.update_job(self.engine, who.project, request.path_params["job_id"], patch, self.next_fire)
        )

    async def pause_job(self, request: Request) -> Response:
        return await self.set_enabled(request, False)

    async def resume_job(self, request: Request) -> Response:
        return await self.set_enabled(request, True)

    async def delete_job(self, request: Request) -> Response:
        who = await self.caller(request)
        await store.delete_job(self.engine, who.project, request.path_params["job_id"])
        return Response(status_code=204)

    async def job_executions(self, request: Request) -> Response:
        who = await self.caller(request)
        limit, offset = self.page(request)
        rows, total = await store.list_executions(
            self.engine, who.project, job_id=request.path_params["job_id"], limit=limit, offset=offset
        )
        return _ok(rows, total=total, limit=limit, offset=offset)


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise FieldError([{"field": name, "message": f"must be an integer, got {raw[:50]!r}"}]) from None
    if not low <= value <= high:
        raise FieldError([{"field": name, "message": f"must be between {low} and {high}, got {value}"}])
    return value


def routes(
    engine: AsyncEngine,
    *,
    admin_token: str | None,
    next_fire: NextFire = platform_next_fire,
    check: ScheduleCheck = platform_check,
    policy: TargetPolicy | None = None,
) -> list[BaseRoute]:
    """The ``/v1`` routes. ``policy`` also refuses callback URLs at creation (the dispatcher always checks)."""
    api = JobsApi(engine, admin_token=admin_token, next_fire=next_fire, check=check, policy=policy)
    g = _guard
    return [
        Mount(
            "/v1",
            routes=[
                Route("/healthcheck", g(api.healthcheck), methods=["GET"]),
                Route("/openapi.json", g(api.openapi), methods=["GET"]),
                Route("/projects", g(api.create_project), methods=["POST"]),
                Route("/projects", g(api.list_projects), methods=["GET"]),
                Route("/projects/{project_id}", g(api.get_project), methods=["GET"]),
                Route("/projects/{project_id}", g(api.update_project), methods=["PATCH"]),
                Route("/projects/{project_id}", g(api.delete_project), methods=["DELETE"]),
                Route("/projects/{project_id}/credentials", g(api.create_credential), methods=["POST"]),
                Route("/projects/{project_id}/credentials", g(api.list_credentials), methods=["GET"]),
                Route("/projects/{project_id}/executions", g(api.project_executions), methods=["GET"]),
                Route("/credentials/{credential_id}", g(api.revoke_credential), methods=["DELETE"]),
                Route("/jobs", g(api.create_jobs), methods=["POST"]),
                Route("/jobs", g(api.list_jobs), methods=["GET"]),
                Route("/jobs/{job_id}", g(api.get_job), methods=["GET"]),
                Route("/jobs/{job_id}", g(api.update_job), methods=["PATCH"]),
                Route("/jobs/{job_id}", g(api.delete_job), methods=["DELETE"]),
                Route("/jobs/{job_id}/pause", g(api.pause_job), methods=["POST"]),
                Route("/jobs/{job_id}/resume", g(api.resume_job), methods=["POST"]),
                Route("/jobs/{job_id}/executions", g(api.job_executions), methods=["GET"]),
            ],
        )
    ]


# ---------------------------------------------------------------------------------------------- OpenAPI


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_ANSWERS = {
    "400": {"description": "malformed JSON"},
    "401": {"description": "missing or wrong credentials"},
    "403": {"description": "not allowed with these credentials"},
    "404": {"description": "not found (or another project's)"},
    "422": {"description": "validation error naming the field"},
}


def _op(
    summary: str,
    ok: str = "200",
    body: dict[str, Any] | None = None,
    params: tuple[str, ...] = (),
    query: bool = False,
    conflict: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            ok: {"description": "success"},
            **_ANSWERS,
            **({"409": {"description": "name taken"}} if conflict else {}),
        },
        "parameters": [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params],
    }
    if query:
        op["parameters"] += [
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}},
            {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        ]
    if body is not None:
        op["requestBody"] = _json_body(body)
    return op


@functools.cache
def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for /v1; request bodies are the pydantic models' JSON Schemas."""
    schemas: dict[str, Any] = {}
    for model in (ProjectIn, ProjectPatch, JobIn, JobPatch):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    job, project = ("job_id",), ("project_id",)
    jobs_body = {
        "oneOf": [_ref("JobIn"), {"type": "array", "items": _ref("JobIn"), "minItems": 1, "maxItems": MAX_BATCH}]
    }
    list_jobs = _op("list jobs", query=True)
    list_jobs["parameters"] += [
        {"name": "enabled", "in": "query", "schema": {"type": "string", "enum": ["true", "false"]}},
        {"name": "callback_url", "in": "query", "schema": {"type": "string"}},
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "HTTP jobs", "version": "1"},
        "servers": [{"url": "/"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "secretKey": {"type": "apiKey", "in": "header", "name": "x-secret-key"},
                "admin": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"apiKey": [], "secretKey": []}, {"admin": []}],
        "paths": {
            "/v1/healthcheck": {
                "get": {"summary": "liveness", "security": [], "responses": {"200": {"description": "ok"}}}
            },
            "/v1/projects": {
                "post": _op("create a project (admin)", "201", _ref("ProjectIn"), conflict=True),
                "get": _op("list projects", query=True),
            },
            "/v1/projects/{project_id}": {
                "get": _op("get a project", params=project),
                "patch": _op("update a project", body=_ref("ProjectPatch"), params=project, conflict=True),
                "delete": _op("delete a project with its jobs, logs and credentials (admin)", "204", params=project),
            },
            "/v1/projects/{project_id}/credentials": {
                "post": _op(
                    "create an API key and secret; the secret is shown only here (admin)", "201", params=project
                ),
                "get": _op("list credentials, never their secrets (admin)", params=project),
            },
            "/v1/projects/{project_id}/executions": {
                "get": _op("execution logs of a project, newest first", params=project, query=True),
            },
            "/v1/credentials/{credential_id}": {
                "delete": _op("revoke a credential (admin)", params=("credential_id",)),
            },
            "/v1/jobs": {"post": _op("create one job or a list of up to 1000", "201", jobs_body), "get": list_jobs},
            "/v1/jobs/{job_id}": {
                "get": _op("get a job", params=job),
                "patch": _op("update a job", body=_ref("JobPatch"), params=job),
                "delete": _op("delete a job and its logs", "204", params=job),
            },
            "/v1/jobs/{job_id}/pause": {"post": _op("pause: no fires until resumed", params=job)},
            "/v1/jobs/{job_id}/resume": {"post": _op("resume from now (paused fires are not owed)", params=job)},
            "/v1/jobs/{job_id}/executions": {
                "get": _op("execution logs of a job, newest first", params=job, query=True)
            },
        },
    }
