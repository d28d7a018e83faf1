"""Contract test: schemathesis generates requests from the /v1 OpenAPI document; none may get a 5xx.

The API runs in a real uvicorn server on loopback (its own thread and event loop) against SQLite; the
generated requests carry the admin token, so every operation is reachable, and once per operation with a
project key, so the key path is exercised too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from starlette.applications import Starlette

from manager import jobs_api
from storage.engine import create_engine
from storage.migrate import upgrade
from tests.support.processes import free_port
from tests.support.wait import until

ADMIN = "contract-admin-token"
schema = schemathesis.openapi.from_dict(jobs_api.openapi_document())


class _Server:
    def __init__(self, db: Path) -> None:
        url = f"sqlite:///{db}"
        asyncio.run(upgrade(url))
        self.engine = create_engine(url)
        app = Starlette(routes=jobs_api.routes(self.engine, admin_token=ADMIN))
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Server]:
    srv = _Server(tmp_path_factory.mktemp("contract") / "jobs.db")
    srv.thread.start()
    asyncio.run(until(lambda: srv.server.started, timeout=10, what="uvicorn started"))
    yield srv
    srv.server.should_exit = True
    srv.thread.join(10)


@pytest.fixture(scope="module")
def key(server: _Server) -> dict[str, str]:
    admin = {"authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=server.base_url) as client:
        project = client.post("/v1/projects", json={"name": "contract"}, headers=admin).json()["data"]
        cred = client.post(f"/v1/projects/{project['id']}/credentials", headers=admin).json()["data"]
    return {"x-api-key": cred["api_key"], "x-secret-key": cred["secret"]}


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_on_generated_requests(
    case: schemathesis.Case[Any], server: _Server, key: dict[str, str]
) -> None:
    for headers in ({"authorization": f"Bearer {ADMIN}"}, key):
        response = case.call(base_url=server.base_url, headers=headers, timeout=10)
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: " + (response.text[:300])
        )
