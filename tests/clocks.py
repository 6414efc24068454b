"""A clock that stands still until the test moves it (``krill.clock.Clock`` for tests).

Like trio's ``MockClock`` at rate 0: ``monotonic`` returns the same time until
``advance`` moves it, and a ``sleep`` on it ends only once the clock has been
advanced past its end. Given to a ``SwarmEngine``, it makes every timed thing
in the engine wait for the test: the alert pump's pause between batches lasts
until something hurries the pump, an idle seed expires when the test jumps
past ``seed_ttl``.
"""

from __future__ import annotations

import asyncio


class ManualClock:
    """``krill.clock.Clock`` whose time moves only by ``advance``."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        entry = (self._now + seconds, asyncio.get_running_loop().create_future())
        self._sleepers.append(entry)
        try:
            await entry[1]
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        """Move the time on by ``seconds``; every sleep that ends by then returns."""
        self._now += seconds
        for end, woken in self._sleepers:
            if end <= self._now and not woken.done():
                woken.set_result(None)

    @property
    def sleepers(self) -> int:
        """How many tasks are asleep on this clock right now."""
        return sum(1 for _, woken in self._sleepers if not woken.done())
