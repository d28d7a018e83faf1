"""The /v1 jobs API: CRUD, batches, validation errors naming the field, and authentication per project."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from jobs.tables import credentials, jobs
from tests.jobs.conftest import Api

pytestmark = pytest.mark.anyio

JOB = {"spec": "@every 1m", "callback_url": "http://127.0.0.1:9/cb", "data": {"n": 1}}


async def test_job_lifecycle(api: Api) -> None:
    project_id, key = await api.project()
    c = api.client
    created = await c.post("/v1/jobs", json=JOB, headers=key)
    assert created.status_code == 201, created.text
    job = created.json()["data"]
    assert job["project_id"] == project_id and job["enabled"] is True and job["data"] == {"n": 1}
    next_fire = datetime.fromisoformat(job["next_fire_at"])
    assert next_fire - datetime.fromisoformat(job["anchor_at"]) == timedelta(minutes=1)

    got = await c.get(f"/v1/jobs/{job['id']}", headers=key)
    assert got.status_code == 200 and got.json()["data"]["spec"] == "@every 1m"

    paused = await c.post(f"/v1/jobs/{job['id']}/pause", headers=key)
    assert paused.json()["data"]["enabled"] is False and paused.json()["data"]["next_fire_at"] is None
    resumed = await c.post(f"/v1/jobs/{job['id']}/resume", headers=key)
    assert resumed.json()["data"]["next_fire_at"] is not None

    patched = await c.patch(
        f"/v1/jobs/{job['id']}", json={"spec": "0 0 * * *", "timezone": "Europe/Amsterdam"}, headers=key
    )
    assert patched.status_code == 200, patched.text
    fire = datetime.fromisoformat(patched.json()["data"]["next_fire_at"])
    assert fire.astimezone(UTC).hour in (22, 23)  # midnight in Amsterdam

    listed = await c.get("/v1/jobs", params={"enabled": "true", "limit": 10}, headers=key)
    assert listed.json()["total"] == 1
    assert (await c.delete(f"/v1/jobs/{job['id']}", headers=key)).status_code == 204
    assert (await c.get(f"/v1/jobs/{job['id']}", headers=key)).status_code == 404


async def test_batch_of_1000_and_pagination(api: Api) -> None:
    _, key = await api.project()
    batch = [{**JOB, "data": {"i": i}} for i in range(1000)]
    created = await api.client.post("/v1/jobs", json=batch, headers=key)
    assert created.status_code == 201, created.text
    assert len(created.json()["data"]) == 1000
    page = await api.client.get("/v1/jobs", params={"limit": 300, "offset": 900}, headers=key)
    assert page.json()["total"] == 1000 and len(page.json()["data"]) == 100
    too_many = await api.client.post("/v1/jobs", json=[JOB] * 1001, headers=key)
    assert too_many.status_code == 422 and "at most 1000" in too_many.json()["error"]


async def test_bad_spec_timezone_and_url_are_422_naming_the_field(api: Api) -> None:
    _, key = await api.project()
    body = [
        JOB,
        {**JOB, "spec": "61 * * * *"},
        {**JOB, "timezone": "Nowhere/City"},
        {**JOB, "callback_url": "gopher://x"},
    ]
    answer = await api.client.post("/v1/jobs", json=body, headers=key)
    assert answer.status_code == 422
    fields = [e["field"] for e in answer.json()["errors"]]
    assert fields == ["[1].spec", "[2].timezone", "[3].callback_url"]
    assert "Nowhere/City" in answer.json()["error"]
    total = (await api.client.get("/v1/jobs", headers=key)).json()["total"]
    assert total == 0  # all or nothing: the good job of a rejected batch is not created
    bad_patch = await api.client.post("/v1/jobs", json=JOB, headers=key)
    job_id = bad_patch.json()["data"]["id"]
    answer = await api.client.patch(f"/v1/jobs/{job_id}", json={"timezone": "Bad/Zone"}, headers=key)
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "timezone"
    assert (await api.client.post("/v1/jobs", content=b"{not json", headers=key)).status_code == 400


async def test_authentication(api: Api) -> None:
    p1, key1 = await api.project("one")
    _, key2 = await api.project("two")
    c = api.client
    job_id = (await c.post("/v1/jobs", json=JOB, headers=key1)).json()["data"]["id"]

    assert (await c.get("/v1/jobs")).status_code == 401
    wrong_key = {**key1, "x-api-key": "hk_" + "0" * 32}
    wrong_secret = {**key1, "x-secret-key": key1["x-secret-key"] + "x"}
    for headers in (wrong_key, wrong_secret, {"authorization": "Bearer nope"}):
        answer = await c.get(f"/v1/jobs/{job_id}", headers=headers)
        assert answer.status_code == 401, headers
        assert key1["x-secret-key"] not in answer.text
    # Another project's key sees nothing of project one.
    assert (await c.get(f"/v1/jobs/{job_id}", headers=key2)).status_code == 404
    assert (await c.delete(f"/v1/jobs/{job_id}", headers=key2)).status_code == 404
    assert (await c.get(f"/v1/projects/{p1}", headers=key2)).status_code == 404
    assert (await c.get(f"/v1/jobs/{job_id}/executions", headers=key2)).status_code == 404
    assert (await c.get("/v1/jobs", headers=key2)).json()["total"] == 0
    assert (await c.post("/v1/jobs", json={**JOB, "project_id": p1}, headers=key2)).status_code == 403
    # Keys cannot manage projects or credentials.
    assert (await c.post("/v1/projects", json={"name": "x"}, headers=key1)).status_code == 403
    assert (await c.post(f"/v1/projects/{p1}/credentials", headers=key1)).status_code == 403
    # The admin sees everything; a revoked key stops working.
    assert (await c.get(f"/v1/jobs/{job_id}", headers=api.admin)).status_code == 200
    creds = (await c.get(f"/v1/projects/{p1}/credentials", headers=api.admin)).json()["data"]
    assert "secret" not in creds[0] and "secret_hash" not in creds[0]
    assert (await c.delete(f"/v1/credentials/{creds[0]['id']}", headers=api.admin)).status_code == 200
    assert (await c.get(f"/v1/jobs/{job_id}", headers=key1)).status_code == 401


async def test_secret_never_stored_in_clear(api: Api) -> None:
    _, key = await api.project()
    async with api.engine.connect() as conn:
        stored = (await conn.execute(select(credentials.c.secret_hash))).scalar_one()
    assert key["x-secret-key"] not in stored and stored.startswith("pbkdf2_sha256$")


async def test_admin_creates_jobs_for_a_named_project_and_names_a_missing_one(api: Api) -> None:
    project_id, _ = await api.project()
    missing = await api.client.post("/v1/jobs", json=JOB, headers=api.admin)
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "project_id"
    made = await api.client.post("/v1/jobs", json={**JOB, "project_id": project_id}, headers=api.admin)
    assert made.status_code == 201
    async with api.engine.connect() as conn:
        assert (await conn.execute(select(jobs.c.project_id))).scalar_one() == project_id
    unknown = await api.client.post("/v1/jobs", json={**JOB, "project_id": "nope"}, headers=api.admin)
    assert unknown.status_code == 404


async def test_healthcheck_and_openapi(api: Api) -> None:
    assert (await api.client.get("/v1/healthcheck")).json()["data"] == {"status": "ok"}
    doc = (await api.client.get("/v1/openapi.json")).json()
    assert "/v1/jobs" in doc["paths"] and "JobIn" in doc["components"]["schemas"]
