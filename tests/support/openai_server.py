"""A loopback OpenAI-compatible server for tests: chat completions, files and the Batch API.

    async with OpenAIStub() as api:            # or `with OpenAIStub() as api:` in a sync test
        client = AsyncOpenAI(base_url=api.base_url, api_key=api.api_key)
        ...
        assert api.calls("POST", "/v1/chat/completions")[0].json["response_format"] == {"type": "json_object"}

It runs uvicorn in a background thread with its own event loop, bound to 127.0.0.1 on a free port, so the
same stub serves anyio tests, sync tests and child processes, and keeps answering while the test's own loop
is busy. Every request is recorded (`api.requests`) after the Authorization header has been checked (a wrong
or missing key answers 401 in OpenAI's error format, and is recorded too).

Chat completions are answered by `api.responder(body) -> Reply`: a ``dict`` (an analysis object, sent as
the message content in JSON), a ``str`` (the raw content, e.g. broken JSON), or an :class:`HTTPFault`.
The default, :func:`default_analysis`, echoes the session id found in the prompt ("Session id: X") and
turns the user's lines ending in "?" into questions, so a valid analysis comes back for every session.

Batches move ``validating → in_progress → finalizing → completed`` one step per status poll
(``GET /v1/batches/{id}``) when `auto_advance` is on, or under the test's control with `advance()` /
`finish()`. On completion every input line is answered through the same responder; the output file holds
the 200 answers, the error file the lines faulted with `line_faults[custom_id] = "error"` (a 500 per line),
and lines faulted ``"missing"`` appear in neither. `outcome` (or `outcomes[batch_id]`) makes a batch end
``failed``, ``expired`` (answering only `done_before_expiry`, the rest in the error file as
``batch_expired``) or ``cancelled`` instead. An input file whose lines name more than one model fails
validation, as the real API does. `fail(method, path, times=n, status=503)` makes the next ``n`` matching
requests answer an HTTP error (with ``retry-after-ms: 1`` so SDK retries stay fast).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DEFAULT_MODEL_ANSWER = "gpt-4o-2024-08-06"
LineFault = Literal["error", "missing"]
BatchEnd = Literal["completed", "failed", "expired", "cancelled"]
_STEPS = ("validating", "in_progress", "finalizing", "completed")
_SESSION_ID = re.compile(r"Session id:\s*(\S+)")


@dataclass(frozen=True)
class HTTPFault:
    """An HTTP error answer (OpenAI error format)."""

    status: int = 500
    message: str = "injected server error"
    retry_after_ms: int | None = 1


Reply = dict[str, Any] | str | HTTPFault
Responder = Callable[[dict[str, Any]], Reply]


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the stub answered

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Fault:
    method: str | None
    path: re.Pattern[str]
    remaining: int
    fault: HTTPFault


@dataclass
class StubFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.content.decode().splitlines() if line.strip()]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class StubBatch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    times: dict[str, int] = field(default_factory=dict)
    polls: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.times.get("in_progress"),
            "expires_at": self.created_at + 86400,
            "finalizing_at": self.times.get("finalizing"),
            "completed_at": self.times.get("completed"),
            "failed_at": self.times.get("failed"),
            "expired_at": self.times.get("expired"),
            "cancelling_at": self.times.get("cancelling"),
            "cancelled_at": self.times.get("cancelled"),
            "request_counts": dict(self.counts),
            "metadata": self.metadata,
        }


def session_id_of(body: dict[str, Any]) -> str | None:
    """The session id a chat body's prompt names ("Session id: X"), or None."""
    for message in body.get("messages") or []:
        found = _SESSION_ID.search(str(message.get("content", "")))
        if found:
            return found.group(1)
    return None


def default_analysis(body: dict[str, Any]) -> Reply:
    """A valid analysis for the session named in the prompt; the user's lines ending in "?" are its questions."""
    prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages") or [] if m.get("role") == "user")
    questions = []
    for line in prompt.splitlines():
        text = re.sub(r"^\[[^\]]*\]\s*", "", line.strip())
        if text.lower().startswith("user:") and text.endswith("?"):
            questions.append(text[5:].strip())
    return {
        "language": "en",
        "sentiment": "NEUTRAL",
        "escalated": False,
        "forwarded_hr": False,
        "category": "SCHEDULE_HOURS" if questions else "UNRECOGNIZED_OTHER",
        "questions": questions[:5],
        "summary": "The employee asked the assistant about their work schedule.",
        "session_id": session_id_of(body) or "unknown",
    }


def _error(status: int, message: str, *, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """Fields and files of a multipart/form-data body (no python-multipart dependency needed)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if filename is not None:
            files[str(name)] = (filename, data)
        else:
            fields[str(name)] = data.decode()
    return fields, files


class OpenAIStub:
    def __init__(
        self,
        *,
        api_key: str = "sk-test-stub-key",
        responder: Responder = default_analysis,
        answer_model: str | None = DEFAULT_MODEL_ANSWER,
        auto_advance: bool = True,
    ) -> None:
        self.api_key = api_key
        self.responder = responder
        self.answer_model = answer_model  # the model a response names; None: echo the requested one
        self.auto_advance = auto_advance
        self.outcome: BatchEnd = "completed"  # how batches created from now on end
        self.outcomes: dict[str, BatchEnd] = {}  # per batch id, wins over `outcome`
        self.line_faults: dict[str, LineFault] = {}  # custom_id -> fault in batch results
        self.done_before_expiry: set[str] = set()  # custom_ids an expiring batch still answers
        self.requests: list[Recorded] = []
        self.files: dict[str, StubFile] = {}
        self.batches: dict[str, StubBatch] = {}
        self._faults: list[_Fault] = []
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._failure: BaseException | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAIStub:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self._app(), log_config=None, access_log=False, lifespan="off")
        server = _StubServer(config)
        self._server = server

        def main() -> None:
            try:
                asyncio.run(server.serve([sock]))
            except BaseException as exc:  # reported by start()
                self._failure = exc

        self._thread = threading.Thread(target=main, name=f"openai-stub-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if self._failure is not None or not self._thread.is_alive():
                raise RuntimeError(f"OpenAI stub did not start: {self._failure!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("OpenAI stub did not start within 10 s")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> OpenAIStub:
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)

    # ------------------------------------------------------------------ test controls

    def fail(
        self,
        method: str | None,
        path: str,
        *,
        times: int = 1,
        status: int = 503,
        message: str = "injected server error",
        retry_after_ms: int | None = 1,
    ) -> None:
        """The next `times` requests matching `method` (None: any) and `path` (a regex, full match) answer `status`."""
        with self._lock:
            self._faults.append(_Fault(method, re.compile(path), times, HTTPFault(status, message, retry_after_ms)))

    def calls(self, method: str, path: str) -> list[Recorded]:
        """Recorded requests with this method whose path fully matches the regex `path`."""
        pattern = re.compile(path)
        with self._lock:
            return [r for r in self.requests if r.method == method and pattern.fullmatch(r.path)]

    def advance(self, batch_id: str) -> str:
        """Move a batch one step along its life (as a poll with `auto_advance` does); returns the new status."""
        with self._lock:
            batch = self.batches[batch_id]
            self._step(batch)
            return batch.status

    def finish(self, batch_id: str) -> str:
        """Move a batch to its final status now."""
        with self._lock:
            batch = self.batches[batch_id]
            while batch.status not in ("completed", "failed", "expired", "cancelled"):
                self._step(batch)
            return batch.status

    def input_lines(self, batch_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return self.files[self.batches[batch_id].input_file_id].lines()

    def batch_models(self, batch_id: str) -> set[str]:
        return {str(line["body"].get("model")) for line in self.input_lines(batch_id)}

    # ------------------------------------------------------------------ behaviour

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    def _completion(self, body: dict[str, Any], reply: dict[str, Any] | str) -> dict[str, Any]:
        content = reply if isinstance(reply, str) else json.dumps(reply)
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages") or [])
        prompt_tokens = max(1, prompt_chars // 4)
        completion_tokens = max(1, len(content) // 4)
        return {
            "id": self._new_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.answer_model or body.get("model") or "unknown",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_stub",
        }

    def _step(self, batch: StubBatch) -> None:
        now = int(time.time())
        end = self.outcomes.get(batch.id, "completed")
        if batch.status == "cancelling":
            batch.status = "cancelled"
        elif batch.status in ("completed", "failed", "expired", "cancelled"):
            return
        elif batch.status == "validating":
            models = {str(line["body"].get("model")) for line in self.files[batch.input_file_id].lines()}
            if len(models) > 1:
                batch.status = "failed"
                batch.errors = [
                    {"code": "model_mismatch", "message": f"more than one model in the file: {sorted(models)}"}
                ]
            elif end in ("failed", "cancelled"):
                batch.status = "failed" if end == "failed" else "cancelling"
                if end == "failed":
                    batch.errors = [{"code": "injected", "message": "injected batch failure"}]
            else:
                batch.status = "in_progress"
        elif batch.status == "in_progress":
            if end == "expired":
                self._produce_results(batch, expired=True)
                batch.status = "expired"
            else:
                batch.status = "finalizing"
        elif batch.status == "finalizing":
            self._produce_results(batch)
            batch.status = "completed"
        batch.times[batch.status] = now

    def _produce_results(self, batch: StubBatch, *, expired: bool = False) -> None:
        """Answer the input lines into an output and an error file. An expired batch has answered only the
        lines in `done_before_expiry`; the others are in the error file with code ``batch_expired``, as at OpenAI."""
        out: list[str] = []
        err: list[str] = []
        lines = self.files[batch.input_file_id].lines()
        for line in lines:
            custom_id = str(line["custom_id"])
            fault = self.line_faults.get(custom_id)
            if fault == "missing":
                continue
            line_id = self._new_id("batch_req")
            if expired and custom_id not in self.done_before_expiry:
                error = {"code": "batch_expired", "message": "This request could not be executed before the expiry."}
                err.append(json.dumps({"id": line_id, "custom_id": custom_id, "response": None, "error": error}))
                continue
            reply = self.responder(line["body"]) if fault is None else HTTPFault(500, "injected line failure")
            if isinstance(reply, HTTPFault):
                error_body = {"error": {"message": reply.message, "type": "server_error", "code": None}}
                response = {"status_code": reply.status, "request_id": line_id, "body": error_body}
                err.append(json.dumps({"id": line_id, "custom_id": custom_id, "response": response, "error": None}))
            else:
                body = self._completion(line["body"], reply)
                response = {"status_code": 200, "request_id": line_id, "body": body}
                out.append(json.dumps({"id": line_id, "custom_id": custom_id, "response": response, "error": None}))
        now = int(time.time())
        if out:
            output = StubFile(self._new_id("file"), "batch_output.jsonl", "batch_output", _jsonl(out), now)
            self.files[output.id] = output
            batch.output_file_id = output.id
        if err:
            errors = StubFile(self._new_id("file"), "batch_errors.jsonl", "batch_output", _jsonl(err), now)
            self.files[errors.id] = errors
            batch.error_file_id = errors.id
        batch.counts = {"total": len(lines), "completed": len(out), "failed": len(err)}

    # ------------------------------------------------------------------ HTTP

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/files", self._upload, methods=["POST"]),
                Route("/v1/files/{file_id}/content", self._file_content, methods=["GET"]),
                Route("/v1/files/{file_id}", self._file_info, methods=["GET"]),
                Route("/v1/batches", self._create_batch, methods=["POST"]),
                Route("/v1/batches", self._list_batches, methods=["GET"]),
                Route("/v1/batches/{batch_id}", self._get_batch, methods=["GET"]),
                Route("/v1/batches/{batch_id}/cancel", self._cancel_batch, methods=["POST"]),
            ]
        )

    async def _gate(self, request: Request) -> tuple[bytes, Response | None]:
        """Record the request; answer 401 for a wrong key or an injected fault, else None (go on)."""
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        answer: Response | None = None
        if headers.get("authorization") != f"Bearer {self.api_key}":
            answer = _error(401, "Incorrect API key provided.")
        else:
            with self._lock:
                for fault in self._faults:
                    wanted = fault.remaining > 0 and fault.method in (None, request.method)
                    if wanted and fault.path.fullmatch(request.url.path):
                        fault.remaining -= 1
                        answer = _fault_response(fault.fault)
                        break
        status = answer.status_code if answer is not None else 200
        with self._lock:
            self.requests.append(Recorded(request.method, request.url.path, headers, body, status))
        return body, answer

    async def _chat(self, request: Request) -> Response:
        raw, answer = await self._gate(request)
        if answer is not None:
            return answer
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "request body is not JSON")
        reply = self.responder(body)
        if isinstance(reply, HTTPFault):
            return _fault_response(reply)
        with self._lock:
            return JSONResponse(self._completion(body, reply))

    async def _upload(self, request: Request) -> Response:
        raw, answer = await self._gate(request)
        if answer is not None:
            return answer
        fields, files = _parse_multipart(request.headers.get("content-type", ""), raw)
        if "file" not in files:
            return _error(400, "missing 'file'")
        if fields.get("purpose") != "batch":
            return _error(400, f"purpose must be 'batch', not {fields.get('purpose')!r}")
        filename, content = files["file"]
        for number, line in enumerate(content.decode().splitlines(), start=1):
            try:
                parsed = json.loads(line)
                assert isinstance(parsed, dict) and "custom_id" in parsed and "body" in parsed
            except (ValueError, AssertionError):
                return _error(400, f"line {number} of the JSONL file is not a batch request")
        with self._lock:
            stored = StubFile(self._new_id("file"), filename, "batch", content, int(time.time()))
            self.files[stored.id] = stored
            return JSONResponse(stored.as_json())

    async def _file_info(self, request: Request) -> Response:
        _, answer = await self._gate(request)
        if answer is not None:
            return answer
        stored = self.files.get(request.path_params["file_id"])
        return JSONResponse(stored.as_json()) if stored else _error(404, "No such File object")

    async def _file_content(self, request: Request) -> Response:
        _, answer = await self._gate(request)
        if answer is not None:
            return answer
        stored = self.files.get(request.path_params["file_id"])
        if stored is None:
            return _error(404, "No such File object")
        return Response(stored.content, media_type="application/octet-stream")

    async def _create_batch(self, request: Request) -> Response:
        raw, answer = await self._gate(request)
        if answer is not None:
            return answer
        body = json.loads(raw)
        if body.get("input_file_id") not in self.files:
            return _error(400, "input_file_id does not exist")
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return _error(400, "endpoint must be /v1/chat/completions and completion_window 24h")
        with self._lock:
            batch = StubBatch(
                self._new_id("batch"),
                body["input_file_id"],
                body["endpoint"],
                body["completion_window"],
                body.get("metadata"),
                int(time.time()),
            )
            self.outcomes.setdefault(batch.id, self.outcome)
            self.batches[batch.id] = batch
            return JSONResponse(batch.as_json())

    async def _list_batches(self, request: Request) -> Response:
        _, answer = await self._gate(request)
        if answer is not None:
            return answer
        limit = int(request.query_params.get("limit", "20"))
        after = request.query_params.get("after")
        with self._lock:
            newest_first = sorted(self.batches.values(), key=lambda b: b.id, reverse=True)
            if after:
                newest_first = [b for b in newest_first if b.id < after]
            page = newest_first[:limit]
            return JSONResponse(
                {
                    "object": "list",
                    "data": [b.as_json() for b in page],
                    "first_id": page[0].id if page else None,
                    "last_id": page[-1].id if page else None,
                    "has_more": len(newest_first) > limit,
                }
            )

    async def _get_batch(self, request: Request) -> Response:
        _, answer = await self._gate(request)
        if answer is not None:
            return answer
        with self._lock:
            batch = self.batches.get(request.path_params["batch_id"])
            if batch is None:
                return _error(404, "No such batch")
            batch.polls += 1
            if self.auto_advance:
                self._step(batch)
            return JSONResponse(batch.as_json())

    async def _cancel_batch(self, request: Request) -> Response:
        _, answer = await self._gate(request)
        if answer is not None:
            return answer
        with self._lock:
            batch = self.batches.get(request.path_params["batch_id"])
            if batch is None:
                return _error(404, "No such batch")
            if batch.status in ("validating", "in_progress", "finalizing"):
                batch.status = "cancelling"
                batch.times["cancelling"] = int(time.time())
            return JSONResponse(batch.as_json())


def _jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def _fault_response(fault: HTTPFault) -> JSONResponse:
    response = _error(fault.status, fault.message, kind="server_error" if fault.status >= 500 else "invalid_request")
    if fault.retry_after_ms is not None:
        response.headers["retry-after-ms"] = str(fault.retry_after_ms)
    return response


class _StubServer(uvicorn.Server):
    """Uvicorn without signal handlers: it runs in a background thread and the test process owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
