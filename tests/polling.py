"""Waiting in a test for state that changes inside a running service or engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["until", "until_sync"]


async def until(
    condition: Callable[[], bool], what: str, *, within: float = 30.0, interval: float = 0.01
) -> None:
    """Poll ``condition`` for up to ``within`` s; fail saying ``what`` never happened.

    The ``within`` budget is against a hang, not a measurement: a condition that
    holds is seen within ``interval`` however loaded the machine is.
    """
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for: {what}")
        await asyncio.sleep(interval)


def until_sync(
    condition: Callable[[], bool], what: str, *, within: float = 30.0, interval: float = 0.01
) -> None:
    """``until`` for synchronous tests that drive real processes."""
    asyncio.run(until(condition, what, within=within, interval=interval))
