"""The tracker's HTTP server: announce, metainfo, health, readiness and metrics.

``GET /announce`` is BEP 3 with BEP 23 compact peer lists (and BEP 7
``peers6``); every bad request is answered HTTP 200 with a bencoded
``failure reason``, which is how BitTorrent clients surface tracker errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Iterator

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Metric,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from krill import bencode
from krill.clock import SYSTEM_CLOCK, Clock
from krill.digests import Digest, DigestError
from krill.endpoints import METAINFO
from krill.metainfo import METAINFO_CONTENT_TYPE
from krill.nodeauth import node_middlewares
from krill.readiness import ready_handler
from krill.requestcontext import HEADER as REQUEST_ID_HEADER
from krill.requestcontext import bind_request_id, id_for_request, unbind_request_id
from krill.tls import client_ssl_context
from krill.tracker.announce import (
    EVENTS,
    ORIGIN_PEER_ID_PREFIX,
    Announce,
    AnnounceError,
    announce_from_query,
    choose_peers,
    compact_answer,
    normalised_ip,
    plain_target_fields,
)
from krill.tracker.announce_keys import AnnounceKeys, load_announce_keys
from krill.tracker.config import TrackerConfig
from krill.tracker.metainfo_cache import MetainfoCache, MetainfoUnavailable
from krill.tracker.peerstore import (
    MemoryPeerStore,
    PeerEntry,
    PeerStore,
    PeerStoreUnavailable,
    RedisPeerStore,
    SwarmLimitReached,
    sweep_interval,
)
from krill.tracker.readiness import tracker_checks
from krill.tracker.served import RequestSeconds, with_id_and_latency
from krill.tracker.swarmview import SwarmView

log = logging.getLogger(__name__)


class TrackerMetrics:
    """Per-app Prometheus registry (so several trackers can live in one test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.announce_counts = AnnounceCounts(self.registry)
        self.metainfo_requests = Counter(
            "krill_tracker_metainfo_requests", "Metainfo requests", ["result"],
            registry=self.registry,
        )
        self.swarms = Gauge("krill_tracker_swarms", "Swarms known", registry=self.registry)
        self.peer_store_up = Gauge(
            "krill_tracker_peer_store_up",
            "1 if the peer store (memory or Redis) answered this scrape, else 0",
            registry=self.registry,
        )
        self.request_seconds = RequestSeconds(self.registry)

    def announced(self, event: str, result: str, handed: int = 0) -> None:
        """Count one announce answered with ``result`` that handed out ``handed`` peers."""
        counts = self.announce_counts
        key = (event, result)
        counts.announces[key] = counts.announces.get(key, 0) + 1
        counts.peers_returned += handed


class AnnounceCounts(Collector):
    """``krill_tracker_announces_total{event,result}`` and ``krill_tracker_peers_returned_total``,
    counted in plain ints and exported at scrape time.

    A ``prometheus_client.Counter`` child takes a lock on every ``inc``:
    twice per announce, ~1 us of its CPU (docs/benchmarks.md); the tracker
    counts on its event loop, where the scrape runs too.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.announces: dict[tuple[str, str], int] = {}
        self.peers_returned = 0
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        announces = CounterMetricFamily(
            "krill_tracker_announces", "Announces handled", labels=["event", "result"]
        )
        for (event, result), count in sorted(self.announces.items()):
            announces.add_metric([event, result], count)
        yield announces
        yield CounterMetricFamily(
            "krill_tracker_peers_returned", "Peers handed out in announce answers",
            value=self.peers_returned,
        )  # fmt: skip


class AnnounceState:
    """What an announce reads, held by its handler: no app lookups per announce."""

    __slots__ = (
        "config", "counts", "default_numwant", "intervals", "keyed", "keys", "max_numwant",
        "memory", "metrics", "peer_ttl", "store",
    )  # fmt: skip

    def __init__(self, config: TrackerConfig, metrics: TrackerMetrics, keys: AnnounceKeys):
        self.config = config
        self.metrics = metrics
        self.counts = metrics.announce_counts
        self.keys = keys
        self.keyed = len(keys) > 0
        # The config's numbers, read by every announce: a slot each, not a lookup chain.
        self.peer_ttl = config.peer_ttl
        self.default_numwant = min(config.default_numwant, config.max_numwant)
        self.max_numwant = config.max_numwant
        self.intervals = (config.interval, config.min_interval)
        self.store: PeerStore = MemoryPeerStore()  # replaced as the app starts
        # The store again if it is the memory one: ``plain_answer`` records synchronously.
        self.memory: MemoryPeerStore | None = None


STORE_KEY = web.AppKey("peer_store", PeerStore)
CONFIG_KEY = web.AppKey("config", TrackerConfig)
METAINFO_KEY = web.AppKey("metainfo", MetainfoCache)
METRICS_KEY = web.AppKey("metrics", TrackerMetrics)
ANNOUNCE_KEYS_KEY = web.AppKey("announce_keys", AnnounceKeys)
ANNOUNCE_STATE_KEY = web.AppKey("announce_state", AnnounceState)


def create_app(config: TrackerConfig, clock: Clock = SYSTEM_CLOCK) -> web.Application:
    """The tracker's app. No app-wide middlewares (krill.tracker.served says why): the
    announce routes give ids and time themselves, the others are wrapped one by one."""
    metrics = TrackerMetrics()
    app = web.Application()
    app[CONFIG_KEY] = config
    app[METRICS_KEY] = metrics
    app[METAINFO_KEY] = MetainfoCache(
        config.origin, config.metainfo_cache_entries, config.metainfo_timeout,
        ssl=client_ssl_context(config.client_tls) or True,
        middlewares=node_middlewares(config.origin_credentials, config.origin),
    )  # fmt: skip
    keys = config.announce_keys
    app[ANNOUNCE_KEYS_KEY] = AnnounceKeys({}) if keys is None else load_announce_keys(keys)
    state = app[ANNOUNCE_STATE_KEY] = AnnounceState(config, metrics, app[ANNOUNCE_KEYS_KEY])
    app.cleanup_ctx.append(_peer_store_context)
    app.cleanup_ctx.append(_sweeper_context)
    app.cleanup_ctx.append(_metainfo_context)
    for route in ("/announce", "/announce/{key}"):  # {key}: announce_keys (docs/security.md)
        app.router.add_get(route, announce_handler(state, route, clock))
    served = [
        (METAINFO.route, handle_metainfo),
        ("/metainfo/{digest}", handle_metainfo),
        ("/health", handle_health),
        ("/ready", ready_handler(lambda app: tracker_checks(app[STORE_KEY]))),
        ("/metrics", handle_metrics),
    ]
    for route, handler in served:
        app.router.add_get(route, with_id_and_latency(handler, metrics.request_seconds))
    return app


async def _peer_store_context(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    store: PeerStore
    if config.redis:
        redis_store = RedisPeerStore(config.redis)
        await redis_store.ping()  # fail at start-up, not on the first announce
        store = redis_store
    else:
        store = MemoryPeerStore(config.max_swarms)
    state = app[ANNOUNCE_STATE_KEY]
    app[STORE_KEY] = state.store = store
    state.memory = store if isinstance(store, MemoryPeerStore) else None
    log.info("tracker.peer_store kind=%s", "redis" if config.redis else "memory")
    yield
    await store.close()


async def _sweeper_context(app: web.Application) -> AsyncIterator[None]:
    """Periodically forget expired peers, even in swarms nobody announces to any more."""
    task = asyncio.create_task(_sweep_forever(app[STORE_KEY], app[CONFIG_KEY].peer_ttl))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _sweep_forever(store: PeerStore, peer_ttl: int) -> None:
    while True:
        await asyncio.sleep(sweep_interval(peer_ttl))
        try:
            dropped = await store.sweep()
        except Exception:  # a Redis hiccup must not end sweeping for good
            log.warning("tracker.sweep_failed", exc_info=True)
            continue
        if dropped:
            log.debug("tracker.swept peers=%d", dropped)


async def _metainfo_context(app: web.Application) -> AsyncIterator[None]:
    await app[METAINFO_KEY].start()
    yield
    await app[METAINFO_KEY].close()


def bencoded(value: dict[str, object]) -> web.Response:
    return web.Response(body=bencode.encode(value), content_type="text/plain")


def failure(reason: str, retry_in: int) -> web.Response:
    """A refused announce, with when to announce again.

    libtorrent reads ``interval`` from a failure too, and takes 1800 s when it is
    missing: one announce refused during a Redis restart kept that peer out of the
    new Redis for half an hour (a CI failure of test_faults_tracker). With it, the
    peer retries after the larger of ``retry_in`` and its own backoff (7.5, 15,
    27.5 s ... at the ``tracker_backoff`` of 50 that Krill's engines set).
    """
    return bencoded({"failure reason": reason, "interval": retry_in, "min interval": retry_in})


async def _record(state: AnnounceState, announce: Announce) -> SwarmView:
    """Record (or drop, on ``stopped``) the announcing peer; the swarm's live peers."""
    config = state.config
    store = state.store
    if announce.event == "stopped":
        await store.remove(announce.info_hash, announce.ip, announce.port)
        return await store.view(announce.info_hash)
    entry = PeerEntry(
        announce.ip, announce.port, announce.seeder, announce.origin,
        time.time() + config.peer_ttl,
    )  # fmt: skip
    return await store.record(announce.info_hash, entry, config.peer_ttl)


# The id of an announce that brings none: 32 hex digits as ``krill.requestid`` makes them,
# a random 64-bit prefix per process and a counter, at half the cost of 128 random bits
# formatted (0.2 against 0.4 us in a tight loop; ids must be unique, not secret).
_NEW_REQUEST_IDS = map(f"{os.urandom(8).hex()}%016x".__mod__, itertools.count())


def announce_handler(state: AnnounceState, route: str, clock: Clock) -> Handler:
    """The handler of one announce route: what the request-id and latency middlewares
    do for the other routes, done inline (a third of the tracker's CPU per announce
    went to the middlewares: docs/benchmarks.md).

    An ordinary announce is answered by ``plain_answer``, which logs nothing, so the
    request id is bound (for the lines logged on an announce's behalf) only on the
    general way, ``answer_announce``.
    """
    request_seconds = state.metrics.request_seconds
    now = clock.monotonic
    get_seconds = request_seconds.plain_histogram("GET", route)

    async def handle_announce(request: web.Request) -> web.StreamResponse:
        started = now()
        offered = request.headers.get(REQUEST_ID_HEADER)
        request_id = next(_NEW_REQUEST_IDS) if offered is None else id_for_request(offered)
        try:
            response = plain_answer(request, state)
            if response is None:
                response = await _bound(request_id, answer_announce(request, state))
        except Exception:  # a bug: still bencoded, as a client can show it
            token = bind_request_id(request_id)
            log.exception("tracker.announce_crashed")
            unbind_request_id(token)
            state.metrics.announced("error", "failure")
            response = failure("internal tracker error", state.config.interval)
        finally:
            seconds = (
                get_seconds if request.method == "GET"
                else request_seconds.plain_histogram(request.method, route)
            )  # fmt: skip
            seconds.observe(now() - started)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    return handle_announce


async def _bound(request_id: str, answer: Awaitable[web.Response]) -> web.Response:
    """``answer`` awaited with ``request_id`` bound for the lines it logs."""
    token = bind_request_id(request_id)
    try:
        return await answer
    finally:
        unbind_request_id(token)


# The counter key of an announce answered, by its event ("": none).
_ANSWERED = {event: (event or "none", "ok") for event in EVENTS}
# A named tuple made without its Python-level ``__new__``: 150 ns instead of 380 per announce.
_new_entry = tuple.__new__


def plain_answer(request: web.Request, state: AnnounceState) -> web.Response | None:
    """The answer to an ordinary announce; None for any other, which ``answer_announce`` gives.

    Ordinary: compact, not ``stopped``, a query ``plain_fields`` reads, to the
    memory store, with the announce key (if any) accepted and debug logging
    off. That is nearly every announce a cluster sends, and it is answered
    without a coroutine, an ``Announce``, a log line or a bound request id,
    from the swarm's cached view (``SwarmView.compact_answer``): issue 20's
    0.7x of a bare aiohttp handler needs the announce's own work near 10 us
    (docs/benchmarks.md). The answers are ``answer_announce``'s
    (tests/test_tracker_fastpath.py).
    """
    store = state.memory
    if store is None:
        return None
    fields = plain_target_fields(request.raw_path)
    if fields is None:
        return None
    info_hash, peer_id, port, left, event, numwant, compact = fields
    if not compact or event == "stopped" or log.isEnabledFor(logging.DEBUG):
        return None
    if state.keyed and state.keys.refusal(request.match_info.get("key")) is not None:
        return None
    try:
        ip = normalised_ip(request.remote or "0.0.0.0")
    except AnnounceError:
        return None
    seeder = left == 0 or event == "completed"
    now = time.time()
    origin = peer_id[:3] == ORIGIN_PEER_ID_PREFIX
    entry = _new_entry(PeerEntry, (ip, port, seeder, origin, now + state.peer_ttl))
    try:
        view = store.record_now(info_hash, entry, now)
    except PeerStoreUnavailable:  # a new swarm past max_swarms: the slow path's failure
        return None
    body, handed = view.compact_answer(
        ip, port, seeder,
        state.default_numwant if numwant < 0 else min(numwant, state.max_numwant),
        state.intervals,
    )  # fmt: skip
    counts = state.counts
    key = _ANSWERED[event]
    counts.announces[key] = counts.announces.get(key, 0) + 1
    counts.peers_returned += handed
    return web.Response(body=body, content_type="text/plain")


async def answer_announce(request: web.Request, state: AnnounceState) -> web.Response:
    """The answer to one announce: always bencoded, a ``failure reason`` for a bad one."""
    config = state.config
    metrics = state.metrics
    refusal = state.keys.refusal(request.match_info.get("key"))
    if refusal is not None:
        metrics.announced("unauthorized", "failure")
        log.info("tracker.announce_unauthorized remote=%s reason=%r", request.remote, refusal)
        return failure(refusal, config.interval)
    try:
        announce = announce_from_query(
            request.rel_url.raw_query_string,
            request.remote or "0.0.0.0",
            default_numwant=config.default_numwant,
            max_numwant=config.max_numwant,
        )
    except AnnounceError as exc:
        metrics.announced("invalid", "failure")
        log.info("tracker.announce_refused remote=%s reason=%r", request.remote, str(exc))
        return failure(str(exc), config.interval)
    try:
        swarm = await _record(state, announce)
    except PeerStoreUnavailable as exc:
        # A bencoded failure, not a 500 page: libtorrent logs the reason and retries.
        metrics.announced(announce.event or "none", "failure")
        if isinstance(exc, SwarmLimitReached):  # a flood: one line per announce would be another
            log.debug("tracker.swarm_limit_reached error=%s", exc)
        else:
            log.warning("tracker.peer_store_unavailable error=%s", exc)
        return failure(f"{exc}; announce again later", config.min_interval)
    if announce.event == "stopped":
        v4 = v6 = b""
        handout: list[PeerEntry] = []
        handed = 0
    elif announce.compact:
        v4, v6, handed = swarm.compact(
            announce.ip, announce.port, announce.seeder, announce.numwant
        )
    else:
        handout = choose_peers(swarm.peers, announce)
        handed = len(handout)
    metrics.announced(announce.event or "none", "ok", handed)
    if log.isEnabledFor(logging.DEBUG):  # else the arguments (a hex string) are built for nothing
        log.debug(
            "tracker.announce info_hash=%s peer=%s:%d event=%s left=%d handed=%d",
            announce.info_hash.hex(), announce.ip, announce.port, announce.event or "none",
            announce.left, handed,
        )
    if announce.compact:
        body = compact_answer(
            config.interval, config.min_interval, swarm.seeders, swarm.leechers, v4, v6
        )
        return web.Response(body=body, content_type="text/plain")
    return bencoded({
        "interval": config.interval,
        "min interval": config.min_interval,
        "complete": swarm.seeders,
        "incomplete": swarm.leechers,
        "peers": [{"ip": p.ip, "port": p.port} for p in handout],
    })  # fmt: skip


async def handle_metainfo(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    try:
        digest = Digest.parse(request.match_info["digest"])
    except DigestError as exc:
        metrics.metainfo_requests.labels(result="invalid").inc()
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    try:
        body = await request.app[METAINFO_KEY].get(digest)
    except MetainfoUnavailable as exc:
        metrics.metainfo_requests.labels(result="unavailable").inc()
        # 404 when every origin said it has no such blob; 503 when one could not answer
        # (down, timed out, a bad answer): the blob may well exist, ask again later.
        failure = web.HTTPNotFound if exc.blob_unknown else web.HTTPServiceUnavailable
        raise failure(text=f"no origin could provide metainfo for {digest}: {exc}\n") from None
    metrics.metainfo_requests.labels(result="ok").inc()
    return web.Response(body=body, content_type=METAINFO_CONTENT_TYPE)


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    try:
        metrics.swarms.set(await request.app[STORE_KEY].swarm_count())
    except PeerStoreUnavailable as exc:  # the rest still matters most while Redis is down
        log.warning("tracker.swarm_count_unavailable error=%s", exc)
        metrics.peer_store_up.set(0)  # krill_tracker_swarms keeps its last known value
    else:
        metrics.peer_store_up.set(1)
    body = generate_latest(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
