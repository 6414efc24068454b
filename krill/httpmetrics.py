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

Complete, aborted or client gone
--------------------------------

A body can end short after its headers (and their 200) went out. Each line
says how it ended: ``outcome=`` ``complete``, ``client_gone`` (normal: debug)
or ``aborted`` (the server cut it: WARNING whatever the level), a
``CutReason``, and ``sent=`` body bytes against ``promised=`` (Content-Length;
``-`` where unknown). Cut responses are counted in
``<service>_aborted_responses_total{route,reason}`` (``request_histogram(...,
aborted=name)``), so "pulls that failed after their 200" needs no log search.

How it is known, with no per-chunk work: code that cuts a response or catches
the client's disconnect says so once, ``mark_cut`` (first mark wins; its
``sent`` is a lower bound). Otherwise the middleware reads how the handler
ended (``Ended``): a ``ConnectionError`` is the client gone only if the
client's connection is closed (else an outgoing connection failed), an error
after the headers went out is ``handler_failed``, a cancellation is
``shutdown``, and a response returned before its end is ``unspecified``. A
``ThreadedFileResponse`` (cached and stored blobs) is sent after its handler
returned; it reports its own end (``settle``), and its line and
``on_answer`` come then, with the status it really sent (206, 304, 416).

Decided: ``on_answer`` gets the status sent, aborted or not; a fake status
(499) would claim an answer nobody sent and change the status label set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from enum import Enum, StrEnum, auto
from typing import Any, NamedTuple

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram

from krill.clock import SYSTEM_CLOCK, Clock
from krill.requestcontext import HEADER, bind_request_id, unbind_request_id

__all__ = [
    "REQUEST_BUCKETS",
    "Cut",
    "CutReason",
    "Outcome",
    "RequestHistogram",
    "Stopwatch",
    "client_gone",
    "latency_middleware",
    "mark_cut",
    "request_histogram",
    "route_of",
    "settle",
    "stopwatch",
]

# Prometheus' default buckets stop at 10 s; a blob streamed from the swarm or a
# manifest fetched through a pull-through mirror can take minutes.
REQUEST_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


class Outcome(StrEnum):
    """How a response's body ended (``outcome=`` of the request's line)."""

    COMPLETE = "complete"
    ABORTED = "aborted"  # the server cut it short
    CLIENT_GONE = "client_gone"


class CutReason(StrEnum):
    """Why a body ended short (``reason=``; the ``reason`` label of aborted_responses)."""

    CLIENT_GONE = "client_gone"  # the client closed the connection
    TRANSFER_FAILED = "transfer_failed"  # agent: the blob's transfer broke, stalled or mismatched
    UPSTREAM_FAILED = "upstream_failed"  # origin: the pull-through download broke or mismatched
    STORAGE_FAILED = "storage_failed"  # origin: the bucket's stream broke off
    HANDLER_FAILED = "handler_failed"  # raised after the headers (logged as status=500)
    SHUTDOWN = "shutdown"  # the service stopped (its handlers cancelled) mid-answer
    UNSPECIFIED = "unspecified"  # the handler returned before the body's end, saying nothing


class Ended(Enum):
    """How the handler itself ended, as the middleware saw it."""

    RETURNED = auto()  # with a response (which may have been cut: ``mark_cut``)
    RAISED = auto()  # an error (an HTTP error is an answer, and RETURNED)
    CLIENT_GONE = auto()  # a ConnectionError with the client's connection closed
    CANCELLED = auto()  # the service is stopping


# Statuses that carry no body whatever their Content-Length says.
_NO_BODY = frozenset({204, 304})


class Cut(NamedTuple):
    """A body that ended short: why, and its body bytes sent when known."""

    reason: CutReason
    sent: int | None = None

    @property
    def outcome(self) -> Outcome:
        return Outcome.CLIENT_GONE if self.reason is CutReason.CLIENT_GONE else Outcome.ABORTED


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
_CUT = web.RequestKey("cut", Cut)
# What a response that reports its own send calls once it is over (``settle``).
_SETTLE: web.RequestKey[Callable[[web.StreamResponse], None]] = web.RequestKey("settle")


def stopwatch(request: web.Request) -> Stopwatch:
    """The request's stopwatch; one started now if no latency middleware timed it."""
    found = request.get(_STOPWATCH)
    return found if found is not None else Stopwatch()


def mark_cut(request: web.BaseRequest, reason: CutReason, sent: int | None = None) -> None:
    """Say why ``request``'s body ends short (``sent``: at least that many body bytes went out).

    Call where the connection is cut or the client's disconnect is caught, once
    per response, not per chunk. The first mark stands: a cut that then surfaces
    as a ``ConnectionError`` stays the cut it was.
    """
    if _CUT not in request:
        request[_CUT] = Cut(reason, sent)


def settle(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """A response that ``reports_its_send`` is sent, or ended short (then ``mark_cut`` first)."""
    report = request.get(_SETTLE)
    if report is not None:
        del request[_SETTLE]
        report(response)


class RequestHistogram(Histogram):
    """The request histogram, with the counter of its service's cut responses, if any."""

    aborted: Counter | None = None


def request_histogram(
    name: str,
    registry: CollectorRegistry,
    buckets: Sequence[float] = REQUEST_BUCKETS,
    *,
    aborted: str | None = None,
) -> RequestHistogram:
    """The request histogram; ``aborted`` names a counter of cut responses beside it."""
    histogram = RequestHistogram(
        name,
        "Seconds from a request's arrival to its handler's answer, by method and route pattern",
        ["method", "route"],
        registry=registry,
        buckets=buckets,
    )
    if aborted is not None:
        histogram.aborted = Counter(
            aborted,
            "Responses whose body ended short after their headers went out, by route "
            "pattern and reason (client_gone, transfer_failed, upstream_failed, ...)",
            ["route", "reason"],
            registry=registry,
        )
    return histogram


def route_of(request: web.Request) -> str:
    """The canonical pattern of the route that matched, or ``unmatched``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _reports_its_send(response: web.StreamResponse) -> bool:
    """Whether ``response`` sends its body after its handler and ``settle``s when done."""
    return getattr(response, "reports_its_send", False) is True


def client_gone(request: web.BaseRequest) -> bool:
    """Whether the client's connection is closed (or closing)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _headers_sent(request: web.BaseRequest) -> bool:
    """Whether a status line went out: aiohttp's own test before it answers an error."""
    return request.writer.output_size > 0


def _cut_of(request: web.Request, response: web.StreamResponse | None, ended: Ended) -> Cut | None:
    """How a handler's answer ended: None if whole (or still to be sent by aiohttp)."""
    cut = request.get(_CUT)
    if cut is not None:
        return cut
    if ended is Ended.CLIENT_GONE:
        return Cut(CutReason.CLIENT_GONE)
    if ended is Ended.CANCELLED:
        return Cut(CutReason.SHUTDOWN)
    if ended is Ended.RAISED:
        # Before its headers aiohttp answers 500 whole; after them it can only cut.
        return Cut(CutReason.HANDLER_FAILED) if _headers_sent(request) else None
    if response is None or not response.prepared or response._eof_sent:
        return None
    if request.method == "HEAD" or response.status in _NO_BODY:
        return None  # nothing was owed
    # Returned before its EOF: aiohttp writes that, unless the connection is gone
    # or the body is shorter than its Content-Length (``writer.length``: bytes owed).
    transport = request.transport
    if transport is None or transport.is_closing() or request.writer.length:
        return Cut(CutReason.UNSPECIFIED)
    return None


def _sent(
    request: web.BaseRequest,
    response: web.StreamResponse | None,
    promised: int | None,
    cut: Cut | None,
) -> int | None:
    """Body bytes sent: all promised if whole, else as marked or as counted by aiohttp."""
    if request.method == "HEAD" or (response is not None and response.status in _NO_BODY):
        return 0
    if cut is None:
        return promised
    if cut.sent is not None:
        return cut.sent
    if response is None:
        return None  # the handler raised: its response is gone with it
    if not response.prepared:
        return 0
    if _reports_its_send(response):
        return None  # sendfile bypasses aiohttp's count
    owed = request.writer.length
    return None if promised is None or owed is None else promised - owed


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def latency_middleware(
    histogram: Histogram,
    clock: Clock = SYSTEM_CLOCK,
    *,
    on_answer: Callable[[web.Request, int], None] | None = None,
) -> Middleware:
    """A middleware observing each request's seconds in ``histogram`` (labels method, route).

    Failed requests are observed too: a slow 503 is exactly what the latency
    panel should show. ``on_answer(request, status)`` is called for every
    request, after the observation. A response cut short is counted in the
    ``aborted`` counter of a ``RequestHistogram`` that has one.
    """

    # The labelled child per (method, route): a dict lookup instead of prometheus'
    # label validation and lock on every request. Bounded, as clients choose methods.
    children: dict[tuple[str, str], Any] = {}
    aborted = histogram.aborted if isinstance(histogram, RequestHistogram) else None
    debug = log.isEnabledFor

    def report(
        request: web.Request,
        route: str,
        status: int,
        response: web.StreamResponse | None,
        cut: Cut | None,
        seconds: float,
    ) -> None:
        if cut is not None and aborted is not None:
            aborted.labels(route, cut.reason).inc()
        level = logging.WARNING if cut is not None and cut.outcome is Outcome.ABORTED else 0
        if level or debug(logging.DEBUG):
            promised = None if response is None else response.content_length
            log.log(
                level or logging.DEBUG,
                "http.request method=%s route=%s path=%s status=%d outcome=%s%s sent=%s "
                "promised=%s seconds=%.4f",
                request.method, route, request.path, status,
                Outcome.COMPLETE if cut is None else cut.outcome,
                "" if cut is None else f" reason={cut.reason}",
                _count(_sent(request, response, promised, cut)), _count(promised), seconds,
            )  # fmt: skip

    def later(request: web.Request, route: str) -> Callable[[web.StreamResponse], None]:
        def settled(response: web.StreamResponse) -> None:
            # After the handler: its request-id context is gone; bind the id it echoed.
            request_id = response.headers.get(HEADER)
            token = None if request_id is None else bind_request_id(request_id)
            try:
                if on_answer is not None:
                    on_answer(request, response.status)  # 206, 304, 416: known only now
                seconds = stopwatch(request).elapsed()  # to the send's end
                report(request, route, response.status, response, request.get(_CUT), seconds)
            finally:
                if token is not None:
                    unbind_request_id(token)

        return settled

    @web.middleware
    async def time_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        watch = request[_STOPWATCH] = Stopwatch(clock)
        status = 500  # unless the handler answers or raises an HTTP error
        response: web.StreamResponse | None = None
        ended = Ended.RETURNED
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except ConnectionError:
            # The client's, or an outgoing connection's (then the client is still there).
            ended = Ended.CLIENT_GONE if client_gone(request) else Ended.RAISED
            raise
        except asyncio.CancelledError:
            # aiohttp cancels a handler when its client leaves (handler_cancellation)
            # and when the service stops (its connection still open).
            ended = Ended.CLIENT_GONE if client_gone(request) else Ended.CANCELLED
            raise
        except Exception:
            ended = Ended.RAISED
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
            if (
                ended is Ended.RETURNED
                and response is not None
                and not response.prepared
                and _reports_its_send(response)
            ):
                request[_SETTLE] = later(request, route)  # its send tells how it ended
            else:
                if on_answer is not None:
                    on_answer(request, status)
                cut = _cut_of(request, response, ended)
                if cut is not None or debug(logging.DEBUG):
                    report(request, route, status, response, cut, seconds)

    return time_request
