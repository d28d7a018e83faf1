"""Requests made in the same event-loop turn served by one call: a hundred services due together, one query."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

Request = TypeVar("Request")
Result = TypeVar("Result")


@dataclass
class _Waiter(Generic[Request, Result]):
    request: Request
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Result | None = None
    error: BaseException | None = None


class TurnBatcher(Generic[Request, Result]):
    """`submit()` calls made in one event-loop turn share one `flush(requests) -> results` call.

    The first caller leads: it yields once, so every task woken for the same instant can add its request,
    then runs `flush` for all of them and hands each caller its own result (or the shared error). Calls
    arriving while a flush is in flight start the next batch.
    """

    def __init__(self, flush: Callable[[Sequence[Request]], Awaitable[Sequence[Result]]]) -> None:
        self._flush = flush
        self._pending: list[_Waiter[Request, Result]] = []

    async def submit(self, request: Request) -> Result:
        waiter: _Waiter[Request, Result] = _Waiter(request)
        self._pending.append(waiter)
        if len(self._pending) > 1:
            await waiter.done.wait()
        else:
            await anyio.lowlevel.checkpoint()
            batch, self._pending = self._pending, []
            try:
                results = await self._flush([w.request for w in batch])
                for w, result in zip(batch, results, strict=True):
                    w.result = result
            except BaseException as exc:
                for w in batch:
                    w.error = exc
                raise
            finally:
                for w in batch:
                    w.done.set()
        if waiter.error is not None:
            raise waiter.error
        return waiter.result  # type: ignore[return-value]
