"""One HTTP delivery of a group of fires: POST a JSON array, retry with backoff, report how it went.

Pure of the database: the dispatcher decides what to send and records the outcome. A 2xx answer is
success; 408, 429, 5xx and transport errors (connect failure, timeout) are retried ``retry_max`` times,
waiting ``retry_delay * backoff ** (attempt - 1)``; any other status is final at once (the receiver said no).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import httpx

RETRYABLE_STATUS = frozenset({408, 425, 429}) | frozenset(range(500, 600))
USER_AGENT = "livedash-schedulers http-jobs"


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    status_code: int | None  # of the last attempt; None when no response came
    latency_ms: float  # of the last attempt
    attempts: int
    error: str | None


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    *,
    request_timeout: float,
    retry_max: int,
    retry_delay: float,
    backoff: float = 2.0,
    headers: dict[str, str] | None = None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> DeliveryResult:
    """POST ``body`` (already-encoded JSON) to ``url`` with retries; never raises for HTTP or network errors."""
    all_headers = {"content-type": "application/json", "user-agent": USER_AGENT, **(headers or {})}
    attempt = 0
    while True:
        attempt += 1
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            response = await client.post(url, content=body, headers=all_headers, timeout=request_timeout)
            await response.aclose()
            status = response.status_code
            if 200 <= status < 300:
                return DeliveryResult(True, status, _ms(started), attempt, None)
            error = f"HTTP {status}"
            retryable = status in RETRYABLE_STATUS
        except httpx.TimeoutException:
            error, retryable = f"timed out after {request_timeout:g}s", True
        except httpx.HTTPError as exc:
            error, retryable = f"{type(exc).__name__}: {_one_line(exc)}", True
        latency = _ms(started)
        if not retryable or attempt > retry_max:
            return DeliveryResult(False, status, latency, attempt, error)
        await sleep(retry_delay * backoff ** (attempt - 1))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:500] or type(exc).__name__
