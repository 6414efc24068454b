"""Time as an object: code asks a clock for the time and for sleeps, tests step one by hand.

The swarm engine's timing (the alert pump's pause between batches, seed
expiry, the origin feed's pacer and stall fill, how long it waits for
libtorrent to confirm a removal) reads ``Clock.monotonic`` and sleeps with
``Clock.sleep``. Production passes nothing and gets ``SYSTEM_CLOCK``; a
test passes a clock it moves itself (``tests/clocks.py``), so "the seed has
been idle for ten minutes" or "the pump pauses until something hurries it"
takes no wall time and needs no patched constant. The model is trio's
``MockClock`` (and Kraken's injected ``clock.Clock``).

``SystemClock.monotonic`` is ``time.monotonic`` itself, not a method calling
it: the engine reads the clock once per verified piece, and that must cost
no more than it did before the clock was injectable.

asyncio loads where a sleep or a timeout first needs it (by then the caller
runs an event loop and has loaded it), not with this module: the delta CLI's
status line (``krill.progress``) reads a clock, and ``krill delta apply``,
which runs no loop and is timed by its users, would pay 15 ms of imports for
nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "timeout"]


class Clock(Protocol):
    """A monotonic time source and sleeps measured on it."""

    def monotonic(self) -> float:
        """Seconds on this clock (only differences mean anything)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""
        ...


class SystemClock:
    """The event loop's own time: ``time.monotonic`` and ``asyncio.sleep``."""

    monotonic = staticmethod(time.monotonic)  # no Python frame per call (see module doc)

    async def sleep(self, seconds: float) -> None:
        import asyncio  # see "asyncio loads" in the module docstring

        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


@contextlib.asynccontextmanager
async def timeout(clock: Clock, seconds: float) -> AsyncIterator[None]:
    """``asyncio.timeout(seconds)`` with the seconds counted on ``clock``.

    On the system clock it is ``asyncio.timeout`` itself. On any other clock a
    task sleeps on that clock and then expires the timeout, so a test's clock
    decides when the body is given up on.
    """
    import asyncio  # see "asyncio loads" in the module docstring

    if isinstance(clock, SystemClock):
        async with asyncio.timeout(seconds):
            yield
        return
    async with asyncio.timeout(None) as deadline:

        async def expire() -> None:
            await clock.sleep(seconds)
            deadline.reschedule(asyncio.get_running_loop().time())

        alarm = asyncio.create_task(expire())
        try:
            yield
        finally:
            alarm.cancel()
