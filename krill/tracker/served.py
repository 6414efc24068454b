"""Request ids and latency for the tracker's routes, without app-wide middlewares.

Every Krill service runs ``krill.requestid``'s and ``krill.httpmetrics``'
middlewares on every request. On the tracker, whose announce is a few tens
of microseconds of work, the two middlewares and the one aiohttp adds to any
app that has middlewares cost about as much as the whole 0.7x budget of
issue 20 (docs/benchmarks.md). So the tracker's app has no middlewares:

* the rare routes (metainfo, health, readiness, metrics) are wrapped one by
  one in the same two middlewares (``with_id_and_latency``), so they behave
  as before;
* the announce routes do the same work inline (``krill.tracker.server``) and
  time themselves into ``PlainHistogram``s: plain ints bumped on the event
  loop, exported at scrape time, instead of a prometheus child's locks.

``RequestSeconds`` exports both as one ``krill_tracker_request_seconds``
family, labelled by method and route pattern as before. Requests no route
matches (404, 405) are answered by aiohttp itself, untimed and without an id:
they never reach a handler and log nothing.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from functools import partial, update_wrapper

from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Histogram, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from krill.httpmetrics import REQUEST_BUCKETS, latency_middleware
from krill.requestid import request_id_middleware

REQUEST_SECONDS = "krill_tracker_request_seconds"


class PlainHistogram:
    """One route's latency histogram in plain ints: ``observe`` is a bisect and two adds.

    Not thread-safe, and need not be: announces are answered and metrics
    scraped on the same event loop.
    """

    __slots__ = ("bounds", "counts", "created", "total")

    def __init__(self, bounds: Sequence[float] = REQUEST_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf's own
        self.total = 0.0
        self.created = time.time()

    def observe(self, seconds: float) -> None:
        # Prometheus' buckets are "less than or equal": bisect_left puts a value equal
        # to a bound in that bound's bucket.
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def samples(self, name: str, labels: dict[str, str]) -> list[Sample]:
        """The samples a prometheus ``Histogram`` child would export."""
        out = []
        cumulative = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            le = {**labels, "le": floatToGoString(bound)}
            out.append(Sample(f"{name}_bucket", le, float(cumulative)))
        out.append(Sample(f"{name}_count", labels, float(cumulative)))
        out.append(Sample(f"{name}_sum", labels, self.total))
        out.append(Sample(f"{name}_created", labels, self.created))
        return out


class RequestSeconds(Collector):
    """``krill_tracker_request_seconds{method,route}``: a prometheus ``Histogram`` for the
    routes behind ``with_id_and_latency`` and ``PlainHistogram``s for the hot ones."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            REQUEST_SECONDS,
            "Seconds from a request's arrival to its handler's answer, by method and route pattern",
            ["method", "route"],
            registry=None,  # exported through this collector, with the plain ones
            buckets=REQUEST_BUCKETS,
        )
        self.plain: dict[tuple[str, str], PlainHistogram] = {}
        registry.register(self)

    def plain_histogram(self, method: str, route: str) -> PlainHistogram:
        """The histogram a hot route observes itself into."""
        found = self.plain.get((method, route))
        if found is None:  # bounded: the routes are the app's, the methods aiohttp's
            found = self.plain[method, route] = PlainHistogram()
        return found

    def collect(self) -> Iterator[Metric]:
        for family in self.histogram.collect():
            for (method, route), plain in sorted(self.plain.items()):
                if any(plain.counts):  # as a prometheus child: exported once observed
                    labels = {"method": method, "route": route}
                    family.samples.extend(plain.samples(REQUEST_SECONDS, labels))
            yield family


def with_id_and_latency(handler: Handler, request_seconds: RequestSeconds) -> Handler:
    """``handler`` behind the request-id and latency middlewares, for this route only."""
    timed = latency_middleware(request_seconds.histogram)
    inner = update_wrapper(partial(timed, handler=handler), handler)
    return update_wrapper(partial(request_id_middleware, handler=inner), handler)
