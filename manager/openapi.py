"""The OpenAPI document served at /openapi.json (kept by hand: the API is small and stable)."""

from __future__ import annotations

from typing import Any

_ERROR = {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_JSON_OK = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_AUTH: list[dict[str, list[str]]] = [{"bearer": []}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Scheduler admin API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "The value of SCHEDULER_ADMIN_TOKEN."}},
        "schemas": {
            "Error": {"type": "object", "required": ["success", "error"],
                      "properties": {"success": {"const": False}, "error": {"type": "string"}}},
            "Action": {
                "type": "object", "required": ["action"],
                "properties": {
                    "action": {"enum": ["start", "stop", "pause", "resume", "trigger", "startAll", "stopAll"]},
                    "schedulerId": {"type": "string", "description": "Required except for startAll/stopAll."},
                },
            },
            "Health": {
                "type": "object",
                "properties": {
                    "healthy": {"type": "boolean"}, "status": {"enum": ["healthy", "unhealthy", "error"]},
                    "timestamp": {"type": "string", "format": "date-time"},
                    "schedulers": {"type": "object", "properties": {
                        "total": {"type": "integer"}, "running": {"type": "integer"}, "errors": {"type": "integer"}}},
                    "details": {"type": "object", "additionalProperties": {"type": "object"}},
                },
            },
        },
    },
    "paths": {
        "/livez": {"get": {"summary": "The event loop is alive (never touches the database)",
                           "responses": {"200": _JSON_OK}}},
        "/readyz": {"get": {"summary": "Started and the database is reachable; 503 while draining",
                            "responses": {"200": _JSON_OK, "503": _JSON_OK}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
        "/api/admin/schedulers/health": {
            "get": {"summary": "Aggregated health (no auth)", "responses": {
                "200": {"description": "healthy",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}},
                "503": {"description": "unhealthy"}}},
            "head": {"summary": "Health as a status code only", "responses": {"200": {"description": "healthy"},
                                                                               "503": {"description": "unhealthy"}}},
        },
        "/api/admin/schedulers": {
            "get": {"summary": "Every service: status, config, metrics, next runs", "responses": {"200": _JSON_OK}},
            "post": {
                "summary": "Lifecycle action; trigger answers 202 with the run id at once",
                "security": _AUTH,
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Action"}}}},
                "responses": {"200": _JSON_OK, "202": _JSON_OK, "400": _ERROR, "401": _ERROR, "403": _ERROR,
                              "404": _ERROR, "409": _ERROR},
            },
        },
        "/api/admin/schedulers/{name}": {
            "get": {"summary": "One service", "parameters": [_NAME], "responses": {"200": _JSON_OK, "404": _ERROR}},
            "patch": {
                "summary": "Change runtime settings (interval, timezone, timeout, retries...); they persist",
                "security": _AUTH, "parameters": [_NAME],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": _JSON_OK, "400": _ERROR, "401": _ERROR, "403": _ERROR, "404": _ERROR},
            },
        },
        "/api/admin/schedulers/{name}/runs": {
            "get": {
                "summary": "Run history, newest first",
                "parameters": [_NAME,
                               {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                           "maximum": 500, "default": 50}},
                               {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                            "default": 0}}],
                "responses": {"200": _JSON_OK, "400": _ERROR, "404": _ERROR},
            },
        },
        "/api/admin/schedulers/{name}/runs/{run_id}": {
            "get": {"summary": "One run", "parameters": [_NAME, {"name": "run_id", "in": "path", "required": True,
                                                                  "schema": {"type": "string"}}],
                    "responses": {"200": _JSON_OK, "404": _ERROR}},
        },
        "/api/admin/fleet": {
            "get": {"summary": "Every service, node and lease holder as stored in the database (the status command's "
                               "model)", "responses": {"200": _JSON_OK, "503": _ERROR}},
        },
        "/api/admin/runs": {
            "get": {
                "summary": "Run history of the whole fleet, newest first",
                "parameters": [{"name": "scheduler", "in": "query", "schema": {"type": "string"}},
                               {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                           "maximum": 500, "default": 50}},
                               {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                            "default": 0}}],
                "responses": {"200": _JSON_OK, "400": _ERROR},
            },
        },
    },
}
