"""The OpenAI provider, direct mode: one chat completion per session through the ``openai`` SDK.

Transient failures (network, timeouts, 429, 5xx) are retried by the SDK itself (``max_retries``, with its
backoff); what is still failing after that is reported as *transient*, so the caller can try the session again
in a later run instead of failing it. An answer that does not validate as a
:class:`~domain.analysis.schema.SessionAnalysis` is asked for again up to ``invalid_retries`` times; after that
the session fails with the validator's reason. Every call, good or bad, is reported through ``on_call`` so the
caller records its cost (the model is the one the *response* names; a dated name such as
"gpt-4o-2024-08-06" is priced by its prefix). The API key never appears in an error: it is scrubbed from
every message before it leaves this module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import openai
from openai import AsyncOpenAI

from domain.analysis.costs import Usage
from domain.analysis.prompt import Transcript, chat_body
from domain.analysis.schema import InvalidAnalysis, SessionAnalysis, parse_analysis
from domain.analysis.settings import OpenAISettings

MAX_ERROR_CHARS = 1000
_TRANSIENT = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)  # incl. timeouts


@dataclass(frozen=True)
class Call:
    """One chat-completion call, for the cost record."""

    model: str  # the response's model, or the requested one when there was no response
    usage: Usage | None
    response: Mapping[str, Any] | None  # id, service_tier, system_fingerprint, ...
    success: bool
    error: str | None


@dataclass
class Verdict:
    """What became of one session: an analysis, or why not (``transient``: worth another run later)."""

    analysis: SessionAnalysis | None = None
    reason: str | None = None
    transient: bool = False
    calls: list[Call] = field(default_factory=list)


OnCall = Callable[[Call], Awaitable[None]]


class OpenAIAnalyzer:
    """Analyses transcripts with chat completions; one client (connection pool) shared by all sessions."""

    def __init__(
        self, settings: OpenAISettings, *, invalid_retries: int = 2, client: AsyncOpenAI | None = None
    ) -> None:
        if invalid_retries < 0:
            raise ValueError(f"invalid_retries must be 0 or more, got {invalid_retries!r}")
        self.settings = settings
        self.invalid_retries = invalid_retries
        self._secret = settings.require_key()
        self.client = client or AsyncOpenAI(
            api_key=self._secret,
            base_url=settings.openai_base_url,
            timeout=settings.openai_timeout,
            max_retries=settings.openai_max_retries,
        )

    async def aclose(self) -> None:
        await self.client.close()

    def scrub(self, text: str) -> str:
        """``text`` without the API key, cut to a storable length."""
        if self._secret:
            text = text.replace(self._secret, "***")
        return text[:MAX_ERROR_CHARS]

    async def analyze(self, transcript: Transcript, on_call: OnCall | None = None) -> Verdict:
        """Ask until the answer validates (1 + ``invalid_retries`` calls at most); never raises for API or
        validation errors (cancellation still propagates)."""
        verdict = Verdict()
        body = chat_body(transcript)
        for _ in range(1 + self.invalid_retries):
            call, content, problem = await self._call(body)
            if content is not None:
                try:
                    verdict.analysis = parse_analysis(content, session_id=transcript.session_id)
                except InvalidAnalysis as exc:
                    call = Call(call.model, call.usage, call.response, False, self.scrub(f"invalid output: {exc}"))
                    verdict.reason = f"invalid output: {exc}"
            verdict.calls.append(call)
            if on_call is not None:
                await on_call(call)
            if verdict.analysis is not None:
                verdict.reason = None
                return verdict
            if problem is not None:  # the API failed (after the SDK's own retries): no point asking again now
                verdict.reason, verdict.transient = problem
                return verdict
        verdict.reason = self.scrub(verdict.reason or "no usable answer")
        return verdict

    async def _call(self, body: dict[str, Any]) -> tuple[Call, str | None, tuple[str, bool] | None]:
        requested = str(body["model"])
        try:
            response = await self.client.chat.completions.create(**body)
        except _TRANSIENT as exc:
            reason = self.scrub(f"OpenAI unavailable: {type(exc).__name__}: {exc}")
            return Call(requested, None, None, False, reason), None, (reason, True)
        except openai.OpenAIError as exc:  # 4xx: bad request, authentication, unknown model...
            reason = self.scrub(f"OpenAI error: {type(exc).__name__}: {exc}")
            return Call(requested, None, None, False, reason), None, (reason, False)
        data = response.model_dump(mode="json")
        model = str(data.get("model") or requested)
        usage = Usage.from_openai(data.get("usage"))
        content: str | None = None
        choices = data.get("choices") or []
        if choices and isinstance(choices[0], Mapping):
            message = choices[0].get("message") or {}
            content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, str):
            content = ""  # parse_analysis names it: "content: empty answer"
        return Call(model, usage, data, True, None), content, None
