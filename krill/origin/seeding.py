"""Origin seeding: serve each blob's metainfo and seed the blob into the swarm.

``install_seeding`` adds to an origin's aiohttp app:

* ``GET /krill/v1/metainfo/<digest>``: the blob's deterministic torrent
  (``krill.metainfo.make_metainfo``), generated once per blob and kept as
  the blob's ``.torrent`` sidecar in the store. The first request for a
  blob's metainfo also starts seeding it: asking for metainfo is what a
  node does right before joining the swarm, so the origin is there when
  the first peer arrives, and blobs nobody pulls cost no torrent.
* ``POST /krill/v1/claims/<digest>`` and ``GET /krill/v1/blobs/<digest>``:
  each node of a herd takes different pieces straight from the origin
  (``origin.piececlaims``), so the origin sends each piece about once;
* a cleanup context running one ``SwarmEngine`` (origin mode) for the app's
  lifetime; it announces to the tracker and drops torrents idle for
  ``settings.seed_ttl``.

Pieces are read from the store file in place (see ``SwarmEngine.seed``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from krill.atomicfile import write_atomic
from krill.blobstore import BlobStore
from krill.config import ConfigError, parse_hostport
from krill.digests import Digest
from krill.endpoints import METAINFO
from krill.metainfo import (
    METAINFO_CONTENT_TYPE,
    MetainfoError,
    MetainfoOutdated,
    check_metainfo,
    make_metainfo,
)
from krill.nodeauth import check_announce_key, keyed_announce_url
from krill.origin.appkeys import BLOB_PUSHED
from krill.origin.config import OriginConfig
from krill.origin.errors import blob_not_on_origin, stored_digest
from krill.origin.pieceburst import DEFAULT_SLOTS
from krill.origin.piececlaims import install_piece_claims
from krill.origin.storage_seeding import fill_for_seeding, metainfo_from_owner
from krill.registry_errors import RegistryError
from krill.registry_params import parse_digest
from krill.singleflight import SingleFlight
from krill.swarm import PeerEncryption, SwarmEngine, SwarmSettings

__all__ = [
    "SWARM_ENGINE_KEY",
    "MetainfoSidecars",
    "announce_url",
    "install_seeding",
    "swarm_settings_for",
]

log = logging.getLogger(__name__)

SWARM_ENGINE_KEY = web.AppKey("swarm_engine", SwarmEngine)


class MetainfoSidecars:
    """Metainfo per blob, made once and stored beside it; concurrent misses share the work."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._flights: SingleFlight[bytes] = SingleFlight()
        # Preparations nobody awaits, held until done (the loop keeps only weak references).
        self._preparing: set[asyncio.Task[bytes]] = set()

    async def get(self, digest: Digest) -> bytes:
        """The metainfo, loaded or made once however many ask at the same moment."""
        return await self._flights.run(
            digest, lambda: asyncio.to_thread(self._load_or_make, digest)
        )

    def prepare(self, digest: Digest) -> None:
        """Start making ``digest``'s metainfo in the background (failures are logged)."""
        task = asyncio.get_running_loop().create_task(self.get(digest))
        self._preparing.add(task)
        task.add_done_callback(self._prepared)

    def _prepared(self, task: asyncio.Task[bytes]) -> None:
        self._preparing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("origin.metainfo_prepare_failed error=%s", task.exception())

    def _load_or_make(self, digest: Digest) -> bytes:
        """The blob's sidecar torrent; a missing, damaged or outdated one is made again.

        Outdated: made under the piece-length rule before the current one
        (``krill.metainfo``, "Upgrades"). Only the current rule's torrent is
        kept, so every origin hands out one infohash per blob.
        """
        sidecar = self._store.sidecar_path(digest, "torrent")
        try:
            metainfo = sidecar.read_bytes()
            check_metainfo(metainfo, digest, legacy=False)
            return metainfo
        except FileNotFoundError:
            pass
        except MetainfoOutdated as exc:
            log.info("origin.metainfo_outdated digest=%s detail=%s", digest, exc)
        except MetainfoError as exc:  # cut short by a crash, say: derived data, so rebuild it
            log.warning("origin.metainfo_damaged digest=%s error=%s", digest, exc)
        metainfo = make_metainfo(self._store.path(digest), digest)
        write_atomic(sidecar, metainfo)
        log.info("origin.metainfo_made digest=%s bytes=%d", digest, len(metainfo))
        return metainfo


_METAINFO_KEY = web.AppKey("metainfo_sidecars", MetainfoSidecars)


def _prepare_metainfo(app: web.Application, digest: Digest) -> None:
    """Make a just-pushed blob's metainfo now, in the background.

    Otherwise the first node to pull the blob waits while the origin hashes it
    (SHA-1 of every piece: about half a second per GiB here), and with it the
    whole herd that asked at the same moment.
    """
    app[_METAINFO_KEY].prepare(digest)


def announce_url(tracker: str) -> str:
    """A tracker given as base URL or announce URL, as the announce URL libtorrent needs."""
    tracker = tracker.rstrip("/")
    return tracker if tracker.endswith("/announce") else tracker + "/announce"


def swarm_settings_for(config: OriginConfig) -> SwarmSettings:
    """Swarm settings from the origin's config (``tracker``, ``peer_port``, ``seed_ttl``,
    ``super_seed``).

    libtorrent listens on the same host as the registry, so an origin reachable
    at its HTTP address is reachable by peers too.
    """
    if not config.tracker:
        raise ValueError("seeding needs the tracker's URL: set the origin's tracker")
    host, _ = parse_hostport(config.listen)
    return SwarmSettings(
        tracker_url=keyed_announce_url(announce_url(config.tracker), _announce_key(config)),
        listen_host=host,
        peer_port=config.peer_port,
        seed_ttl=config.seed_ttl,
        origin=True,
        super_seeding=config.super_seed,
        peer_encryption=PeerEncryption(config.peer_encryption),
        tracker_ca=config.tracker_ca,
    )


def _announce_key(config: OriginConfig) -> str | None:
    """The key in ``config.announce_key``'s file; ConfigError if it cannot be used."""
    if config.announce_key is None:
        return None
    try:
        key = config.announce_key.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read announce_key {config.announce_key}: {exc.strerror}"
        ) from None
    return check_announce_key(key, f"the key in {config.announce_key}")


def install_seeding(
    app: web.Application,
    store: BlobStore,
    settings: SwarmSettings,
    piece_burst_slots: int = DEFAULT_SLOTS,
) -> None:
    """Add the metainfo route and a SwarmEngine (origin mode) living as long as ``app``,
    and the piece claims (``piece_burst_slots``: ``OriginConfig.piece_burst_slots``)."""
    settings = dataclasses.replace(settings, origin=True)
    app[_METAINFO_KEY] = MetainfoSidecars(store)

    async def swarm_engine(app: web.Application) -> AsyncIterator[None]:
        async with SwarmEngine(settings, store) as engine:
            app[SWARM_ENGINE_KEY] = engine
            yield

    app.cleanup_ctx.append(swarm_engine)
    app.router.add_get(METAINFO.route, _handle_metainfo)
    pushed_hooks = app.get(BLOB_PUSHED)
    if pushed_hooks is not None:  # the full origin app (tests may install on a bare one)
        pushed_hooks.append(lambda digest: _prepare_metainfo(app, digest))
    install_piece_claims(app, store, piece_burst_slots)


async def _handle_metainfo(request: web.Request) -> web.Response:
    engine = request.app[SWARM_ENGINE_KEY]
    try:
        wanted = parse_digest(request.match_info["digest"])
    except RegistryError as exc:
        return exc.response()
    # On several origins on one bucket, the blob's owner seeds it (origin.storage_seeding).
    from_owner = await metainfo_from_owner(request, wanted)
    if from_owner is not None:
        return from_owner
    await fill_for_seeding(request.app, wanted)
    try:
        digest = stored_digest(request, engine.store)
    except RegistryError as exc:
        return exc.response()
    try:
        metainfo = await request.app[_METAINFO_KEY].get(digest)
        await engine.seed(digest, metainfo)
    except FileNotFoundError:  # deleted between the check and the hashing or seeding
        return blob_not_on_origin(digest).response()
    return web.Response(body=metainfo, content_type=METAINFO_CONTENT_TYPE)
