"""Request latency by route, one aiohttp middleware for every service.

``latency_middleware(histogram)`` times each request from the moment the
middleware sees it to the moment its handler returns, and observes the
seconds under the request's method and route. The route is the matched
resource's canonical pattern (``/v2/{name}/blobs/{digest}``), never the raw
path: a path label would make one time series per digest and blow up
Prometheus. Requests no route matched share ``unmatched``.

A handler that streams (``StreamResponse``: a blob from the agent, preheat's
NDJSON) has sent its body when it returns, so its time is the whole
exchange; a plain ``Response`` or ``FileResponse`` is written after the
handler returns, so its time ends when the answer is ready to go out.

At debug level it logs one ``http.request`` line per request (method, route,
path, status, seconds): aiohttp's own access log is written after the
request's context is gone, so only this line carries the request's id
(``krill.requestid``) into the log.

A service that also counts its answers by status passes ``on_answer``: the
middleware already knows each request's final status (an HTTP error raised
counts as its status, anything else as 500), so a second middleware need not
work it out again.

The middleware also leaves a ``Stopwatch`` on the request (``stopwatch``):
code deeper down that reports a phase of the same request (the agent's time
to first byte of a blob) measures from the same start on the same clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Histogram

from krill.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "REQUEST_BUCKETS",
    "Stopwatch",
    "latency_middleware",
    "request_histogram",
    "route_of",
    "stopwatch",
]

# Prometheus' default buckets stop at 10 s; a blob streamed from the swarm or a
# manifest fetched through a pull-through mirror can take minutes.
REQUEST_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


class Stopwatch:
    """When one request started, on the clock that times it."""

    __slots__ = ("clock", "started")

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.started = clock.monotonic()

    def elapsed(self) -> float:
        return self.clock.monotonic() - self.started


log = logging.getLogger(__name__)

# Distinct (method, route) pairs whose histogram child a latency middleware keeps.
_MAX_CACHED_CHILDREN = 1024
_STOPWATCH = web.RequestKey("stopwatch", Stopwatch)


def stopwatch(request: web.Request) -> Stopwatch:
    """The request's stopwatch; one started now if no latency middleware timed it."""
    found = request.get(_STOPWATCH)
    return found if found is not None else Stopwatch()


def request_histogram(
    name: str, registry: CollectorRegistry, buckets: Sequence[float] = REQUEST_BUCKETS
) -> Histogram:
    return Histogram(
        name,
        "Seconds from a request's arrival to its handler's answer, by method and route pattern",
        ["method", "route"],
        registry=registry,
        buckets=buckets,
    )


def route_of(request: web.Request) -> str:
    """The canonical pattern of the route that matched, or ``unmatched``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def latency_middleware(
    histogram: Histogram,
    clock: Clock = SYSTEM_CLOCK,
    *,
    on_answer: Callable[[web.Request, int], None] | None = None,
) -> Middleware:
    """A middleware observing each request's seconds in ``histogram`` (labels method, route).

    Failed requests are observed too: a slow 503 is exactly what the latency
    panel should show. ``on_answer(request, status)`` is called for every
    request, after the observation.
    """

    # The labelled child per (method, route): a dict lookup instead of prometheus'
    # label validation and lock on every request. Bounded, as clients choose methods.
    children: dict[tuple[str, str], Any] = {}
    debug = log.isEnabledFor

    @web.middleware
    async def time_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        watch = request[_STOPWATCH] = Stopwatch(clock)
        status = 500  # unless the handler answers or raises an HTTP error
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            seconds = watch.elapsed()
            route = route_of(request)
            key = (request.method, route)
            child = children.get(key)
            if child is None:
                child = histogram.labels(*key)
                if len(children) < _MAX_CACHED_CHILDREN:
                    children[key] = child
            child.observe(seconds)
            if on_answer is not None:
                on_answer(request, status)
            if debug(logging.DEBUG):
                log.debug(
                    "http.request method=%s route=%s path=%s status=%d seconds=%.4f",
                    request.method, route, request.path, status, seconds,
                )  # fmt: skip

    return time_request
