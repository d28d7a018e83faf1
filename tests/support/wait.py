"""Polling with a deadline: the only way tests wait for something to happen."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import anyio


async def until(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01,  # noqa: ASYNC109
                what: str = "condition") -> Any:
    """Return the first truthy result of `check()` (sync or async); fail the test after `timeout` seconds."""
    try:
        with anyio.fail_after(timeout):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return result
                await anyio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
