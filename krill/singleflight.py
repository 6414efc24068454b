"""Single-flight: concurrent callers asking for the same key share one piece of work.

The first caller (the leader) starts the work in a task of its own, so the
work belongs to no caller: if the leader is cancelled (its client went away)
the work goes on and the other callers still get its result. Each caller
awaits the shared task through ``asyncio.shield``; only a caller's own
cancellation reaches that caller. Once the work finishes the key is free again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Task[T]] = {}

    def in_flight(self, key: Hashable) -> asyncio.Task[T] | None:
        return self._flights.get(key)

    async def run(self, key: Hashable, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``work`` unless a run for ``key`` is under way; then share its outcome."""
        task = self._flights.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(work())
            self._flights[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        # Nobody may be waiting any more; don't warn about an unretrieved exception then.
        if not task.cancelled():
            task.exception()

    async def close(self) -> None:
        """Cancel the work still under way (at shutdown)."""
        tasks = list(self._flights.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
