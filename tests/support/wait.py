"""Polling with a deadline: the only way tests wait for something to happen."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def until(check: Callable[[], Awaitable[T]] | Callable[[], T], timeout: float = 10.0,
                interval: float = 0.01, what: str = "condition") -> T:
    """Return the first truthy result of `check()`; fail the test after `timeout` seconds."""
    try:
        with anyio.fail_after(timeout):
            while True:
                result = check()
                if isinstance(result, Awaitable):
                    result = await result
                if result:
                    return result  # type: ignore[return-value]
                await anyio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
