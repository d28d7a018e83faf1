"""The loopback OpenAI stub behaves like the parts of the API we use, through the real ``openai`` SDK."""

from __future__ import annotations

import io
import json

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.support.openai_server import HTTPFault, OpenAIStub

pytestmark = pytest.mark.anyio


def _line(custom_id: str, model: str, session_id: str) -> str:
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": "analyse"},
            {"role": "user", "content": f"Session id: {session_id}\n\nTranscript:\nuser: When do I work?"},
        ],
        "response_format": {"type": "json_object"},
    }
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


async def test_chat_completion_echoes_the_session_and_records_the_request() -> None:
    async with OpenAIStub() as api:
        client = AsyncOpenAI(base_url=api.base_url, api_key=api.api_key, max_retries=0)
        reply = await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Session id: s-42\n\nTranscript:\n[x] user: Can I swap shifts?"}],
            response_format={"type": "json_object"},
        )
        await client.close()
    assert api.base_url.endswith("/v1")
    analysis = json.loads(reply.choices[0].message.content or "")
    assert analysis["session_id"] == "s-42"
    assert analysis["questions"] == ["Can I swap shifts?"]
    assert reply.model == "gpt-4o-2024-08-06"
    assert reply.usage is not None and reply.usage.total_tokens > 0
    [call] = api.calls("POST", "/v1/chat/completions")
    assert call.json["response_format"] == {"type": "json_object"}


async def test_wrong_key_is_refused_and_injected_faults_are_served_then_cleared() -> None:
    async with OpenAIStub() as api:
        bad = AsyncOpenAI(base_url=api.base_url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        await bad.close()
        api.fail("POST", "/v1/chat/completions", times=2, status=503)
        client = AsyncOpenAI(base_url=api.base_url, api_key=api.api_key, max_retries=0)
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        ok = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        await client.close()
    assert ok.choices[0].message.content
    assert [r.status for r in api.requests] == [401, 503, 503, 200]


async def test_responder_can_answer_garbage_or_an_http_error() -> None:
    api = OpenAIStub(responder=lambda body: "not json {")
    headers = {"Authorization": f"Bearer {api.api_key}"}
    async with api, httpx.AsyncClient(base_url=api.base_url, headers=headers) as c:
        answer = (await c.post("/chat/completions", json={"model": "m", "messages": []})).json()
        assert answer["choices"][0]["message"]["content"] == "not json {"
        api.responder = lambda body: HTTPFault(429, "slow down")
        assert (await c.post("/chat/completions", json={"model": "m", "messages": []})).status_code == 429


def test_batch_lifecycle_with_faulted_lines_from_a_sync_client() -> None:
    with OpenAIStub() as api:
        client = OpenAI(base_url=api.base_url, api_key=api.api_key, max_retries=0)
        api.line_faults = {"r2": "error", "r3": "missing"}
        jsonl = "\n".join(_line(f"r{i}", "gpt-4o", f"s{i}") for i in (1, 2, 3)).encode()
        uploaded = client.files.create(file=("in.jsonl", io.BytesIO(jsonl)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"local_batch_id": "b-1"},
        )
        statuses = [batch.status] + [client.batches.retrieve(batch.id).status for _ in range(3)]
        done = client.batches.retrieve(batch.id)
        assert done.output_file_id and done.error_file_id
        output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
        errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
        listed = client.batches.list(limit=10)
        client.close()
    assert statuses == ["validating", "in_progress", "finalizing", "completed"]
    assert [line["custom_id"] for line in output] == ["r1"]
    content = json.loads(output[0]["response"]["body"]["choices"][0]["message"]["content"])
    assert content["session_id"] == "s1"
    assert [line["custom_id"] for line in errors] == ["r2"]
    assert errors[0]["response"]["status_code"] == 500
    assert [b.metadata for b in listed.data] == [{"local_batch_id": "b-1"}]
    assert api.batch_models(batch.id) == {"gpt-4o"}


@pytest.mark.parametrize("end", ["failed", "expired", "cancelled"])
def test_batches_can_be_made_to_end_badly(end: str) -> None:
    with OpenAIStub() as api:
        client = OpenAI(base_url=api.base_url, api_key=api.api_key, max_retries=0)
        api.outcome = end  # type: ignore[assignment]
        uploaded = client.files.create(file=("in.jsonl", io.BytesIO(_line("r1", "m", "s1").encode())), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert api.finish(batch.id) == end
        final = client.batches.retrieve(batch.id)
        assert final.output_file_id is None
        if end == "expired":  # the unanswered line is in the error file, as at OpenAI
            assert final.error_file_id is not None
            [line] = [json.loads(x) for x in client.files.content(final.error_file_id).text.splitlines()]
            assert line["custom_id"] == "r1" and line["error"]["code"] == "batch_expired"
        client.close()


def test_a_file_mixing_models_fails_validation_and_cancel_works() -> None:
    with OpenAIStub(auto_advance=False) as api:
        client = OpenAI(base_url=api.base_url, api_key=api.api_key, max_retries=0)
        mixed = (_line("r1", "gpt-4o", "s1") + "\n" + _line("r2", "gpt-4o-mini", "s2")).encode()
        uploaded = client.files.create(file=("in.jsonl", io.BytesIO(mixed)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert client.batches.retrieve(batch.id).status == "validating"  # no auto advance
        assert api.advance(batch.id) == "failed"
        other = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert client.batches.cancel(other.id).status == "cancelling"
        assert api.advance(other.id) == "cancelled"
        client.close()
