"""The origin's aiohttp application: the OCI Distribution API plus /health, /ready, /metrics.

``create_app(config)`` returns an application other modules extend: they
read the store and metadata through the typed keys in ``origin.appkeys``
(``STORE``, ``REPOSITORIES``, ``TAG_HISTORY``, ``TAG_MOVED``, ...) and add
their own routes (e.g. ``/krill/v1/metainfo/{digest}``) before it starts.

On-disk layout under ``config.data``: ``blobs/`` and ``incoming/`` (the
``BlobStore``), ``repositories/`` (links, tags and tag history), ``deltas/``, and ``gc.lock``
(``origin.gclock``: a manifest push and a garbage collection's sweep exclude each
other).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from krill.blobstore import BlobStore
from krill.clock import SYSTEM_CLOCK, Clock
from krill.httpmetrics import latency_middleware
from krill.origin import (
    blob_routes,
    listing_routes,
    manifest_routes,
    referrer_routes,
    upload_routes,
)
from krill.origin.appkeys import (
    BLOB_PUSHED,
    CONFIG,
    GC_LOCK,
    METRICS,
    REPOSITORIES,
    STORE,
    TAG_HISTORY,
    TAG_MOVED,
    UPLOADS,
)
from krill.origin.auth_middleware import install_auth
from krill.origin.config import OriginConfig
from krill.origin.gclock import GcLock
from krill.origin.gcservice import periodic_gc
from krill.origin.metrics import OriginMetrics, PieceTurnMetrics
from krill.origin.pullthrough import PULL_THROUGH, PullThrough
from krill.origin.readiness import origin_checks
from krill.origin.repositories import Repositories
from krill.origin.storage import install_object_storage
from krill.origin.taghistory import TagHistory
from krill.origin.uploads import UploadSessions
from krill.readiness import ready_handler
from krill.registry_errors import error_middleware
from krill.registry_params import API_HEADERS
from krill.requestid import install_request_ids

log = logging.getLogger(__name__)

REPOSITORIES_DIR = "repositories"
BLOB_ROUTES = ("blob", "piece_blob")


def create_app(config: OriginConfig, *, clock: Clock = SYSTEM_CLOCK) -> web.Application:
    """A ready-to-run origin app for ``config`` (nothing listens until it is run).

    ``clock`` times the pull-through tag TTL (tests pass one they move by hand).
    """
    origin_metrics = OriginMetrics()
    timed = latency_middleware(origin_metrics.request_seconds, clock, on_answer=count_request)
    app = web.Application(middlewares=[timed, error_middleware])
    install_request_ids(app)
    store = BlobStore(config.data)
    app[CONFIG] = config
    app[GC_LOCK] = GcLock(config.data)
    app[STORE] = store
    app[REPOSITORIES] = Repositories(config.data / REPOSITORIES_DIR)
    app[TAG_HISTORY] = TagHistory(config.data / REPOSITORIES_DIR)
    app[TAG_MOVED] = []
    app[BLOB_PUSHED] = []
    app[UPLOADS] = UploadSessions(store, config.max_upload_sessions)
    app[METRICS] = origin_metrics
    app[PULL_THROUGH] = PullThrough(app, config, clock) if config.upstream else None
    app.router.add_get("/v2/", base_check, name="base")
    app.router.add_get("/health", health, name="health")
    app.router.add_get("/ready", ready_handler(origin_checks), name="ready")
    app.router.add_get("/metrics", metrics, name="metrics")
    for module in (listing_routes, upload_routes, manifest_routes, referrer_routes, blob_routes):
        app.router.add_routes(module.routes())
    install_auth(app, clock)  # --auth: users, access rules, /auth/token (docs/security.md)
    app.on_response_prepare.append(count_blob_bytes)
    app.cleanup_ctx.append(background_work)
    app.cleanup_ctx.append(periodic_gc(clock))
    if config.deltas:  # layer deltas: TAG_MOVED hook, /krill/v1/deltas, process pool
        from krill.origin import delta_routes, deltas

        delta_routes.setup(app, deltas.settings_for(config), prefetch=app[PULL_THROUGH])
    if config.tracker:  # seed blobs into the swarm: /krill/v1/metainfo + a SwarmEngine
        from krill.origin.piececlaims import piece_turnstile
        from krill.origin.seeding import install_seeding, swarm_settings_for

        install_seeding(app, store, swarm_settings_for(config), config.piece_burst_slots)
        turnstile = piece_turnstile(app)
        if turnstile is not None:
            origin_metrics.registry.register(PieceTurnMetrics(turnstile))
    install_object_storage(app, config, clock=clock)  # storage = s3://... (docs/storage.md)
    return app


async def base_check(request: web.Request) -> web.Response:
    """``/v2/``: tells clients this is a registry speaking API v2 (no auth needed)."""
    return web.json_response({}, headers=API_HEADERS)


async def health(request: web.Request) -> web.Response:
    app = request.app
    return web.json_response(
        {
            "status": "ok",
            "uploads_in_progress": len(app[UPLOADS]),
            "upstream": app[CONFIG].upstream_for_display,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


def count_request(request: web.Request, status: int) -> None:
    """Count every request by method, route name and final status."""
    route = request.match_info.route.name or "unmatched"
    request.app[METRICS].requests.labels(request.method, route, str(status)).inc()


async def count_blob_bytes(request: web.Request, response: web.StreamResponse) -> None:
    """Add a blob GET's body length (after Range) to bytes served, just before it is sent."""
    if request.method != "GET" or request.match_info.route.name not in BLOB_ROUTES:
        return
    if response.status in (200, 206) and response.content_length:
        request.app[METRICS].bytes_served.inc(response.content_length)


async def background_work(app: web.Application) -> AsyncIterator[None]:
    """Expire idle upload sessions; open and close the upstream client."""
    pull = app[PULL_THROUGH]
    if pull is not None:
        await pull.start()
    expiry = asyncio.create_task(expire_uploads(app))
    yield
    expiry.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await expiry
    app[UPLOADS].close()
    if pull is not None:
        await pull.close()


async def expire_uploads(app: web.Application) -> None:
    idle = app[CONFIG].upload_idle_timeout
    while True:
        await asyncio.sleep(min(idle, 60.0))
        app[UPLOADS].expire(idle)
