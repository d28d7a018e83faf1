"""batch-processing when things go wrong: failed, expired and cancelled batches (retried, then given up),
error-file and malformed output lines, a crash between submission and bookkeeping, a submission that never
arrived, a refused submission, HTTP errors while polling or downloading, and odd remote statuses."""

# ruff: noqa: F811 - the shared fixtures are imported from test_batch_processing and requested by name

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.batch_api import RemoteBatch
from domain.model import BatchStatus, RequestStatus, Stage, StageStatus
from domain.tables import ai_batch_requests, ai_processing_requests
from services.clock import FakeClock
from tests.pipeline.test_batch_processing import (  # noqa: F401
    _close_clients,
    _no_openai_env,
    api,
    count,
    drive,
    engine,
    processor,
    rows,
    seed_requests,
    stage,
)
from tests.support.openai_server import OpenAIStub, default_analysis, session_id_of

pytestmark = pytest.mark.anyio

GRACE_AND_MORE = 11 * 60  # seconds: past the default 10-minute submit grace


async def requests_by_status(engine: AsyncEngine) -> dict[str, int]:
    result: dict[str, int] = {}
    for row in await rows(engine, ai_processing_requests):
        result[row["processing_status"]] = result.get(row["processing_status"], 0) + 1
    return result


@pytest.mark.parametrize("end", ["failed", "expired", "cancelled"])
async def test_requests_of_a_batch_that_ends_badly_are_retried_then_given_up(
    engine: AsyncEngine, api: OpenAIStub, end: Any
) -> None:
    requests = await seed_requests(engine, 2, model="gpt-4o")
    api.outcome = end
    clock = FakeClock()
    for attempt in (1, 2):
        await drive(engine, api, clock)
        assert await requests_by_status(engine) == {"PENDING_BATCHING": 2}  # never left BATCHING_IN_PROGRESS
        for request in await rows(engine, ai_processing_requests):
            assert request["attempts"] == attempt and request["batch_id"] is None
            assert ("expired" if end == "expired" else end) in request["error_message"]
        clock.advance(60)
    await drive(engine, api, clock)
    assert len(api.batches) == 3
    final = {"failed": "FAILED", "expired": "FAILED", "cancelled": "CANCELLED"}[end]
    assert [r["status"] for r in await rows(engine, ai_batch_requests)] == [final] * 3
    for request_id, session_id in requests.items():
        [request] = await rows(engine, ai_processing_requests, ai_processing_requests.c.id == request_id)
        assert request["processing_status"] == RequestStatus.PROCESSING_FAILED.value
        assert request["error_message"].startswith("gave up after 3 attempts")
        status, reason = await stage(engine, session_id, Stage.AI_ANALYSIS)
        assert status == StageStatus.FAILED.value and reason is not None and "gave up after 3 attempts" in reason
    await drive(engine, api, clock)  # nothing left to batch
    assert len(api.batches) == 3


async def test_error_file_missing_and_malformed_lines_each_get_their_own_outcome(
    engine: AsyncEngine, api: OpenAIStub
) -> None:
    requests = await seed_requests(engine, 5, model="gpt-4o")
    ids = sorted(requests)
    errored, missing, garbage, bad_enum, good = ids
    api.line_faults = {errored: "error", missing: "missing"}

    def answer(body: dict[str, Any]) -> Any:
        session = session_id_of(body)
        if session == requests[garbage]:
            return '{"language": "en", "sentiment": '  # cut off
        if session == requests[bad_enum]:
            reply = default_analysis(body)
            assert isinstance(reply, dict)
            return {**reply, "category": "PARKING_SPACES"}
        return default_analysis(body)

    api.responder = answer
    await drive(engine, api, FakeClock())

    def request(request_id: str) -> Any:
        return next(r for r in all_requests if r["id"] == request_id)

    all_requests = await rows(engine, ai_processing_requests)
    assert request(good)["processing_status"] == "PROCESSING_COMPLETE"
    assert await stage(engine, requests[good], Stage.AI_ANALYSIS) == ("COMPLETED", None)

    assert request(errored)["processing_status"] == "PROCESSING_FAILED"
    assert request(errored)["error_message"] == "error file line 1: injected line failure"
    assert await stage(engine, requests[errored], Stage.AI_ANALYSIS) == ("FAILED", request(errored)["error_message"])

    for bad, words in (
        (garbage, ("invalid analysis", "content", "JSON")),
        (bad_enum, ("invalid analysis", "category")),
    ):
        row = request(bad)
        assert row["processing_status"] == "PROCESSING_FAILED" and not row["success"]
        assert all(word in row["error_message"] for word in words), row["error_message"]
        assert row["prompt_tokens"] > 0 and row["total_cost_usd"] > 0  # the tokens were paid for all the same
        status, reason = await stage(engine, requests[bad], Stage.AI_ANALYSIS)
        assert status == "FAILED" and reason == row["error_message"]

    # in neither file: back to pending for the next batch, which then succeeds
    assert request(missing)["processing_status"] == "PENDING_BATCHING" and request(missing)["batch_id"] is None
    assert [b["status"] for b in await rows(engine, ai_batch_requests)] == ["PROCESSED"]
    api.line_faults = {}
    await drive(engine, api, FakeClock())
    [again] = await rows(engine, ai_processing_requests, ai_processing_requests.c.id == missing)
    assert again["processing_status"] == "PROCESSING_COMPLETE" and again["attempts"] == 2


async def test_a_crash_between_submission_and_bookkeeping_is_adopted_not_resubmitted(
    engine: AsyncEngine, api: OpenAIStub
) -> None:
    await seed_requests(engine, 3, model="gpt-4o")
    clock = FakeClock()
    work = processor(engine, api, clock)

    async def crash(batch_id: str, remote: RemoteBatch) -> None:
        raise ConnectionResetError("database connection lost")

    work._record_submission = crash  # type: ignore[method-assign]
    with pytest.raises(ConnectionResetError):
        await work.create()
    assert len(api.batches) == 1
    [local] = await rows(engine, ai_batch_requests)
    assert local["status"] == BatchStatus.UPLOADING.value and local["openai_batch_id"] is None
    assert await requests_by_status(engine) == {"BATCHING_IN_PROGRESS": 3}

    early = processor(engine, api, clock)
    assert await early.recover() == 0  # within the grace period: the submitter may still be recording it
    clock.advance(GRACE_AND_MORE)
    later = processor(engine, api, clock)
    assert await later.recover() == 1
    assert later.report.adopted == 1 and later.report.resubmitted == 0
    [remote] = api.batches.values()
    [local] = await rows(engine, ai_batch_requests)
    assert local["openai_batch_id"] == remote.id and local["input_file_id"] == remote.input_file_id
    await drive(engine, api, clock)
    assert len(api.calls("POST", "/v1/batches")) == 1 and len(api.calls("POST", "/v1/files")) == 1
    assert await requests_by_status(engine) == {"PROCESSING_COMPLETE": 3}


async def test_a_submission_that_never_arrived_is_resubmitted_after_the_grace(
    engine: AsyncEngine, api: OpenAIStub
) -> None:
    requests = await seed_requests(engine, 2, model="gpt-4o")
    api.fail("POST", "/v1/files", times=1, status=503)
    clock = FakeClock()
    work = processor(engine, api, clock)
    await work.create()
    [local] = await rows(engine, ai_batch_requests)
    assert local["status"] == "UPLOADING" and "HTTP 503" in local["error"] and api.batches == {}
    assert await requests_by_status(engine) == {"BATCHING_IN_PROGRESS": 2}
    clock.advance(GRACE_AND_MORE)
    await drive(engine, api, clock)
    [remote] = api.batches.values()
    assert {line["custom_id"] for line in api.input_lines(remote.id)} == set(requests)
    assert await requests_by_status(engine) == {"PROCESSING_COMPLETE": 2}
    assert [r["attempts"] for r in await rows(engine, ai_processing_requests)] == [1, 1]


async def test_a_refused_submission_fails_the_batch_and_releases_its_requests(
    engine: AsyncEngine, api: OpenAIStub
) -> None:
    await seed_requests(engine, 2, model="gpt-4o")
    api.fail("POST", "/v1/batches", times=1, status=400, message="bad input file")
    clock = FakeClock()
    await drive(engine, api, clock)
    [local] = await rows(engine, ai_batch_requests)
    assert local["status"] == "FAILED" and "bad input file" in local["error"]
    assert await requests_by_status(engine) == {"PENDING_BATCHING": 2}
    await drive(engine, api, clock)
    assert await requests_by_status(engine) == {"PROCESSING_COMPLETE": 2}


async def test_http_errors_while_polling_or_downloading_do_not_fail_the_batch(
    engine: AsyncEngine, api: OpenAIStub
) -> None:
    await seed_requests(engine, 2, model="gpt-4o")
    clock = FakeClock()
    work = processor(engine, api, clock)
    await work.create()
    api.fail("GET", r"/v1/batches/[^/]+", times=3, status=502)
    for _ in range(3):  # an outage longer than the original's 7 s budget
        await work.poll()
    assert work.report.poll_errors == 3
    assert [r["status"] for r in await rows(engine, ai_batch_requests)] == ["VALIDATING"]
    api.fail("GET", r"/v1/files/[^/]+/content", times=1, status=500)
    for _ in range(3):
        await work.poll()
    assert [r["status"] for r in await rows(engine, ai_batch_requests)] == ["COMPLETED"]  # output not read yet
    assert await requests_by_status(engine) == {"BATCHING_IN_PROGRESS": 2}
    await work.poll()
    assert [r["status"] for r in await rows(engine, ai_batch_requests)] == ["PROCESSED"]
    assert await requests_by_status(engine) == {"PROCESSING_COMPLETE": 2}


async def test_cancelling_and_unknown_statuses_wait_and_a_vanished_batch_is_released(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    await seed_requests(engine, 2, model="gpt-4o")
    async with OpenAIStub(auto_advance=False) as api:
        clock = FakeClock()
        work = processor(engine, api, clock)
        await work.create()
        [remote] = api.batches.values()
        for odd in ("cancelling", "paused_for_maintenance"):
            remote.status = odd
            with caplog.at_level(logging.INFO):
                await work.poll()
            assert any(odd in r.getMessage() and "next poll" in r.getMessage() for r in caplog.records)
            assert [r["status"] for r in await rows(engine, ai_batch_requests)] == ["VALIDATING"]
            assert await requests_by_status(engine) == {"BATCHING_IN_PROGRESS": 2}
        del api.batches[remote.id]  # OpenAI no longer knows it (404)
        await work.poll()
        [local] = await rows(engine, ai_batch_requests)
        assert local["status"] == "FAILED" and "not found" in local["error"]
        assert await requests_by_status(engine) == {"PENDING_BATCHING": 2}
        assert await count(engine, ai_processing_requests, ai_processing_requests.c.attempts == 1) == 2


async def test_an_expired_batch_keeps_what_it_answered_and_retries_the_rest(
    engine: AsyncEngine, api: OpenAIStub
) -> None:
    requests = await seed_requests(engine, 3, model="gpt-4o")
    answered = sorted(requests)[0]
    api.outcome = "expired"
    api.done_before_expiry = {answered}
    await drive(engine, api, FakeClock())
    [batch] = await rows(engine, ai_batch_requests)
    assert batch["status"] == "FAILED" and "expired" in batch["error"] and batch["error_file_id"]
    by_id = {r["id"]: r for r in await rows(engine, ai_processing_requests)}
    assert by_id[answered]["processing_status"] == "PROCESSING_COMPLETE"
    assert await stage(engine, requests[answered], Stage.AI_ANALYSIS) == ("COMPLETED", None)
    for request_id in set(requests) - {answered}:  # "batch_expired" lines are not the request's fault
        assert by_id[request_id]["processing_status"] == "PENDING_BATCHING"
        assert (await stage(engine, requests[request_id], Stage.AI_ANALYSIS))[0] == "IN_PROGRESS"


async def test_recovery_pages_through_the_batch_list(
    engine: AsyncEngine, api: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("domain.openai_batch_client._LIST_PAGE", 2)
    await seed_requests(engine, 1, model="gpt-4o")
    clock = FakeClock(datetime.now(UTC))  # the list stops at batches older than ours: same clock as the stub
    work = processor(engine, api, clock)

    async def crash(batch_id: str, remote: RemoteBatch) -> None:
        raise ConnectionResetError("database connection lost")

    work._record_submission = crash  # type: ignore[method-assign]
    with pytest.raises(ConnectionResetError):
        await work.create()
    [ours] = api.batches
    client = processor(engine, api, clock).api
    for n in range(5):  # newer batches of someone else push ours to the third page
        other = await client.create(api.batches[ours].input_file_id, local_batch_id=f"other-{n}")
        assert other.local_id == f"other-{n}"
    clock.advance(GRACE_AND_MORE)
    later = processor(engine, api, clock)
    assert await later.recover() == 1 and later.report.adopted == 1
    [local] = await rows(engine, ai_batch_requests)
    assert local["openai_batch_id"] == ours
    assert len(api.calls("GET", "/v1/batches")) == 3  # pages of 2, 2 and 2: stopped once found
