"""Single-flight: concurrent callers asking for the same key share one piece of work.

The first caller (the leader) runs the work in its own task; the others wait
for its result (or its exception). Once it finishes the key is free again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Future[T]] = {}

    def in_flight(self, key: Hashable) -> asyncio.Future[T] | None:
        return self._flights.get(key)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` unless a run for ``key`` is under way; then share its outcome."""
        existing = self._flights.get(key)
        if existing is not None:
            return await asyncio.shield(existing)
        future = self.lead(key)
        try:
            result = await work()
        except BaseException as exc:
            self.fail(key, future, exc)
            raise
        self.succeed(key, future, result)
        return result

    def lead(self, key: Hashable) -> asyncio.Future[T]:
        """Claim ``key`` (the caller must later ``succeed`` or ``fail``)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        # Nobody may be waiting; don't warn about an unretrieved exception then.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._flights[key] = future
        return future

    def succeed(self, key: Hashable, future: asyncio.Future[T], result: T) -> None:
        self._flights.pop(key, None)
        if not future.done():
            future.set_result(result)

    def fail(self, key: Hashable, future: asyncio.Future[T], exc: BaseException) -> None:
        self._flights.pop(key, None)
        if future.done():
            return
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)
