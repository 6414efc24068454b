"""The origin's periodic garbage collection (``gc_interval``; off by default).

Runs ``origin.gc.GarbageCollector`` in a thread every ``gc_interval``
seconds (timed on the app's injected clock), counting what it freed in
``krill_origin_gc_freed_bytes_total`` / ``_objects_total`` by kind. A failed
run is logged and the next one tries again: nothing a run leaves half done
is wrong, only not yet removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from krill.clock import Clock
from krill.origin.appkeys import CONFIG, METRICS
from krill.origin.gc import GarbageCollector, GcReport

__all__ = ["periodic_gc", "record"]

log = logging.getLogger(__name__)


def record(app: web.Application, report: GcReport) -> None:
    """Add a run's freed objects and bytes to the app's metrics."""
    metrics = app[METRICS]
    for kind, freed in report.freed.items():
        metrics.gc_freed_objects.labels(kind.value).inc(freed.objects)
        metrics.gc_freed_bytes.labels(kind.value).inc(freed.bytes)


def periodic_gc(clock: Clock) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx that collects every ``gc_interval`` seconds while the app runs."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        task = None
        if config.gc_interval > 0:
            collector = GarbageCollector(
                config.data, config.gc_grace, cache_limits=config.cache_limits()
            )
            task = asyncio.create_task(_loop(app, collector, clock, config.gc_interval))
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return run


async def _loop(
    app: web.Application, collector: GarbageCollector, clock: Clock, interval: float
) -> None:
    while True:
        await clock.sleep(interval)
        try:
            record(app, await asyncio.to_thread(collector.collect))
        except Exception:
            log.exception("gc.failed")
