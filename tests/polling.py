"""Waiting in a test for state that changes inside a running service or engine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` for up to ~30 s; fail saying ``what`` never happened."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still waiting for: {what}")
