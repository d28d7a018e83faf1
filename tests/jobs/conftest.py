"""Fixtures for the http-jobs tests: a migrated database and the /v1 API mounted on a bare Starlette app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from manager import jobs_api
from storage.engine import create_engine
from storage.migrate import upgrade

ADMIN = "admin-token-for-tests"


@dataclass
class Api:
    engine: AsyncEngine
    client: httpx.AsyncClient
    admin: dict[str, str]

    async def project(self, name: str = "p1") -> tuple[str, dict[str, str]]:
        """A new project and a key pair for it, as headers."""
        created = await self.client.post("/v1/projects", json={"name": name}, headers=self.admin)
        assert created.status_code == 201, created.text
        project_id: str = created.json()["data"]["id"]
        cred = await self.client.post(f"/v1/projects/{project_id}/credentials", headers=self.admin)
        assert cred.status_code == 201, cred.text
        data: dict[str, Any] = cred.json()["data"]
        return project_id, {"x-api-key": data["api_key"], "x-secret-key": data["secret"]}


@pytest.fixture
async def engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    await upgrade(sqlite_url)
    engine = create_engine(sqlite_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def api(engine: AsyncEngine) -> AsyncIterator[Api]:
    app = Starlette(routes=jobs_api.routes(engine, admin_token=ADMIN))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Api(engine, client, {"authorization": f"Bearer {ADMIN}"})
