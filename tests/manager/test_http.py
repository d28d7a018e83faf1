"""The admin HTTP API against a platform built from config, on a migrated SQLite database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from manager import app
from manager.config import load_config
from manager.http import create_app
from storage.migrate import upgrade
from tests.support.wait import until

pytestmark = pytest.mark.anyio
TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        "services:\n"
        "  probe:\n"
        "    interval: '@every 1h'\n"
        "  probe-slow:\n"
        "    type: probe\n"
        "    interval: '@every 1h'\n"
        "    duration: 30s\n"
    )
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("SCHEDULER_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("SCHEDULER_PLUGINS", "tests.support.services")
    await upgrade(sqlite_url)
    platform = app.build(load_config(config_file))
    transport = httpx.ASGITransport(app=create_app(platform.admin))
    async with anyio.create_task_group() as tg, httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        await tg.start(platform.manager.run)
        yield c
        platform.manager.shutdown_grace = 0.1
        platform.manager.request_shutdown()
    await platform.engine.dispose()


async def post(client: httpx.AsyncClient, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return await client.post("/api/admin/schedulers", json=body, headers=AUTH if headers is None else headers)


async def test_probes_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/livez")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    # Every label combination exists before anything ran.
    for outcome in ("succeeded", "failed", "timed_out", "cancelled", "skipped", "missed", "abandoned"):
        assert f'scheduler_runs_total{{outcome="{outcome}",scheduler="probe-slow"}} 0.0' in text
    for name in ("scheduler_run_duration_seconds_bucket", "scheduler_last_success_timestamp_seconds",
                 "scheduler_next_run_timestamp_seconds", "scheduler_runs_in_progress",
                 "scheduler_items_processed_total", "scheduler_lag_seconds_bucket", "scheduler_lease_held",
                 "scheduler_build_info"):
        assert name in text, name
    assert 'le="3600.0"' in text  # duration buckets reach an hour
    assert "_created" not in text


async def test_health_has_the_livedash_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/admin/schedulers/health")
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"healthy", "status", "timestamp", "schedulers", "details"}
    assert body["schedulers"]["running"] >= 2
    assert body["details"]["probe"]["status"] == "RUNNING"
    assert (await client.head("/api/admin/schedulers/health")).status_code == 200


async def test_list_and_get(client: httpx.AsyncClient) -> None:
    body = (await client.get("/api/admin/schedulers")).json()
    assert body["success"] is True
    by_id = {s["id"]: s for s in body["data"]["schedulers"]}
    probe = by_id["probe-slow"]
    assert probe["type"] == "probe"
    assert probe["schedule"] == {"expression": "@every 1h", "timezone": "UTC", "description": "every 1h"}
    assert probe["config"]["duration"] == "30s"
    assert len(probe["nextRuns"]) == 3
    assert probe["metrics"]["totalRuns"] == 0
    one = (await client.get("/api/admin/schedulers/probe")).json()
    assert one["data"]["id"] == "probe"
    missing = await client.get("/api/admin/schedulers/nope")
    assert missing.status_code == 404 and "valid names" in missing.json()["error"]


async def test_actions_need_the_token(client: httpx.AsyncClient) -> None:
    body = {"action": "pause", "schedulerId": "probe"}
    missing = await post(client, body, headers={})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = await post(client, body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert TOKEN not in wrong.text


async def test_bad_requests_get_clear_json_errors(client: httpx.AsyncClient) -> None:
    bad_json = await client.post("/api/admin/schedulers", content=b"{nope", headers=AUTH)
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]
    assert (await post(client, ["start"])).status_code == 400
    unknown = await post(client, {"action": "explode", "schedulerId": "probe"})
    assert unknown.status_code == 400 and "valid actions" in unknown.json()["error"]
    no_id = await post(client, {"action": "start"})
    assert no_id.status_code == 400 and "schedulerId is required" in no_id.json()["error"]
    ghost = await post(client, {"action": "trigger", "schedulerId": "ghost"})
    assert ghost.status_code == 404
    page = await client.get("/api/admin/schedulers/probe/runs?limit=abc")
    assert page.status_code == 400 and "limit must be an integer" in page.json()["error"]
    assert (await client.get("/no/such/route")).status_code == 404


async def test_trigger_answers_at_once_and_the_run_is_visible(client: httpx.AsyncClient) -> None:
    with anyio.fail_after(2):  # the slow probe runs 30 s; the request must not wait for it
        response = await post(client, {"action": "trigger", "schedulerId": "probe-slow"})
    assert response.status_code == 202
    run_id = response.json()["runId"]
    run = (await client.get(f"/api/admin/schedulers/probe-slow/runs/{run_id}")).json()["data"]
    assert run["status"] == "running" and run["trigger"] == "manual"
    again = await post(client, {"action": "trigger", "schedulerId": "probe-slow"})
    assert again.status_code == 409 and again.json()["runId"] == run_id

    quick = await post(client, {"action": "trigger", "schedulerId": "probe"})
    quick_id = quick.json()["runId"]

    async def succeeded() -> bool:
        r = await client.get(f"/api/admin/schedulers/probe/runs/{quick_id}")
        return bool(r.json()["data"]["status"] == "succeeded")

    await until(succeeded, what="the triggered run to succeed")
    runs = (await client.get("/api/admin/schedulers/probe/runs?limit=1")).json()["data"]
    assert runs["total"] == 1 and runs["runs"][0]["id"] == quick_id
    text = (await client.get("/metrics")).text
    assert 'scheduler_runs_total{outcome="succeeded",scheduler="probe"} 1.0' in text
    assert 'scheduler_items_processed_total{scheduler="probe"} 1.0' in text
    assert 'scheduler_runs_in_progress{scheduler="probe-slow"} 1.0' in text


async def test_lifecycle_actions(client: httpx.AsyncClient) -> None:
    paused = await post(client, {"action": "pause", "schedulerId": "probe"})
    assert paused.status_code == 200 and paused.json()["scheduler"]["status"] == "PAUSED"
    assert (await post(client, {"action": "pause", "schedulerId": "probe"})).status_code == 409
    assert (await post(client, {"action": "resume", "schedulerId": "probe"})).json()["scheduler"]["status"] == "RUNNING"
    stopped = await post(client, {"action": "stop", "schedulerId": "probe"})
    assert stopped.json()["scheduler"]["status"] == "STOPPED"
    assert (await post(client, {"action": "trigger", "schedulerId": "probe"})).status_code == 409
    started = await post(client, {"action": "start", "schedulerId": "probe"})
    assert started.json()["scheduler"]["status"] == "RUNNING"
    assert (await post(client, {"action": "stopAll"})).status_code == 200
    health = (await client.get("/api/admin/schedulers/health")).json()
    assert health["schedulers"]["running"] == 0
    assert (await post(client, {"action": "startAll"})).status_code == 200
    assert (await client.get("/api/admin/schedulers/health")).json()["schedulers"]["running"] >= 2


async def test_schedule_change_through_the_api(client: httpx.AsyncClient) -> None:
    response = await client.patch("/api/admin/schedulers/probe", json={"interval": "*/5 * * * *"}, headers=AUTH)
    assert response.status_code == 200
    assert response.json()["data"]["schedule"]["expression"] == "*/5 * * * *"
    bad = await client.patch("/api/admin/schedulers/probe", json={"interval": "every day"}, headers=AUTH)
    assert bad.status_code == 400 and "every day" in bad.json()["error"]
    assert (await client.patch("/api/admin/schedulers/probe", json={"interval": "@hourly"})).status_code == 401


async def test_openapi_document(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    assert "/api/admin/schedulers/{name}/runs" in doc["paths"]


async def test_actions_are_disabled_without_a_token(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.delenv("SCHEDULER_ADMIN_TOKEN", raising=False)
    platform = app.build(load_config())
    transport = httpx.ASGITransport(app=create_app(platform.admin))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        response = await c.post("/api/admin/schedulers", json={"action": "startAll"})
    assert response.status_code == 403 and "SCHEDULER_ADMIN_TOKEN" in response.json()["error"]
    await platform.engine.dispose()
