"""An origin on object storage: blob bytes written through to S3, the data directory as cache.

With ``storage = "s3://BUCKET/PREFIX"`` (``origin.storage_url``) the origin
keeps working exactly as on a directory, and in addition:

* **write-through**: a push is answered 201 only once its bytes are in the
  bucket. Uploads still land in ``incoming/`` and are verified and committed
  to the local store first (so nothing unverified ever reaches the bucket);
  then the committed file is put to the bucket under its digest (hashed again
  on the way: the object appears only if it matches). If the bucket refuses,
  the client gets 503 ``UNAVAILABLE`` and pushes again (the blob is then
  already local; only the put is repeated).
* **read-through**: a blob linked in a repository but missing from the local
  store is copied into the store from the bucket (verified, once however many
  ask at the same moment), and the GET that started the copy is answered from
  its chunks as they come (``origin.storage_fill``: one read of the object);
  others, and ranged GETs, are streamed from the bucket, ``Range`` passed on
  (``origin.storage_responses``). From then on it is served like any local
  blob. Keeping the local file keeps sendfile, the piece claims and the swarm
  seeding (libtorrent reads the file in place) unchanged.
* **repository metadata** (links and tags) is in the bucket too
  (``origin.storage_metadata``), written through and read through around the
  unchanged handlers by one middleware (``origin.storage_sync``), so several
  origins on one bucket answer as one registry.

What stays local (docs/storage.md, "Object storage"): tag history, deltas
and their index, metainfo sidecars, upload sessions, and a pull-through
mirror's fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from krill.blobbackend import BlobReader, DigestMismatchError, PutOutcome
from krill.clierror import CliError
from krill.clock import SYSTEM_CLOCK, Clock
from krill.config import ConfigError
from krill.digests import Digest
from krill.origin import gctombstones as tombstones
from krill.origin.appkeys import CONFIG, GC_LOCK, METRICS, REPOSITORIES, STORE
from krill.origin.auth_tls import replica_ssl_context
from krill.origin.config import OriginConfig
from krill.origin.storage_cache import evict_to_fit
from krill.origin.storage_deltas import BUCKET_DELTAS, BucketDeltas
from krill.origin.storage_fill import FillTap, copy_in
from krill.origin.storage_gc import held, reconcile_with_bucket, sweep_bucket
from krill.origin.storage_metadata import METADATA, BucketMetadata
from krill.origin.storage_replicas import install_replicas
from krill.origin.storage_sync import bucket_sync, catalog_sync
from krill.origin.storage_url import parse_storage_url, s3_credentials
from krill.registry_errors import RegistryError
from krill.s3backend import S3Backend, S3Error, S3Location

__all__ = [
    "OBJECT_STORE",
    "ObjectStore",
    "collect_bucket",
    "install_object_storage",
    "object_store_location",
]

log = logging.getLogger(__name__)

# The gc metrics' label for what the bucket's collection freed.
BUCKET_KIND = "bucket"
# Seconds between checks of the local cache's size (local_cache_max_bytes).
CACHE_CHECK_INTERVAL = 30.0


class ObjectStore:
    """The bucket behind an origin, and the read-through fills of its local store."""

    def __init__(self, backend: S3Backend) -> None:
        self.backend = backend
        # Copies into the local store under way, one per blob (held: the loop keeps
        # only weak references to tasks nobody awaits).
        self._fills: dict[Digest, asyncio.Task[bool]] = {}
        # When each blob was last answered from the local store (origin.storage_cache).
        self.last_served: dict[Digest, float] = {}

    def touch(self, digest: Digest) -> None:
        """Note that a blob was just served from the local store (the cache keeps it longest)."""
        self.last_served[digest] = time.time()

    async def write_through(self, app: web.Application, digest: Digest) -> None:
        """Put a just-committed local blob to the bucket; 503 UNAVAILABLE if it can't be.

        "Is it there already?" is asked under the shared gc lock: a bucket sweep
        batch (exclusive) then cannot find the blob unlinked and delete the object
        after we counted on it (origin.storage_gc).
        """
        path = app[STORE].path(digest)
        try:
            async with held(app[GC_LOCK].shared()):
                await tombstones.lift(self.backend, [digest])  # we count on it if it's there
                present = await self.backend.exists(digest)
            outcome = PutOutcome.ALREADY_PRESENT
            if not present:
                outcome = await self.backend.put_file(digest, path)
        except (S3Error, FileNotFoundError, DigestMismatchError) as exc:
            log.error("origin.write_through_failed digest=%s error=%s", digest, exc)
            raise RegistryError(
                "UNAVAILABLE",
                f"{digest} is stored on this origin but could not be written to its object "
                f"store ({exc}); push it again",
                headers={"Retry-After": "10"},
            ) from None
        log.info("origin.write_through digest=%s outcome=%s", digest, outcome.value)

    async def size(self, digest: Digest) -> int | None:
        """The blob's size in the bucket, None if it is not there; 503 if the bucket fails."""
        try:
            info = await self.backend.stat(digest)
        except S3Error as exc:
            raise RegistryError(
                "UNAVAILABLE", f"{digest} could not be looked up in the object store: {exc}"
            ) from None
        return None if info is None else info.size

    @contextlib.asynccontextmanager
    async def open(self, digest: Digest, start: int, length: int) -> AsyncIterator[BlobReader]:
        """Read a range from the bucket; 503 UNAVAILABLE if the bucket fails before the body."""
        try:
            async with self.backend.open(digest, start, length) as reader:
                yield reader
        except S3Error as exc:
            raise RegistryError(
                "UNAVAILABLE", f"{digest} could not be read from the object store: {exc}"
            ) from None

    async def fill(self, app: web.Application, digest: Digest) -> bool:
        """Copy a blob from the bucket into the local store; False if the bucket lacks it."""
        task = self._fills.get(digest) or self._start(app, digest, None)
        return await asyncio.shield(task)

    def filling(self, digest: Digest) -> bool:
        """Whether a copy of the blob into the local store is under way."""
        return digest in self._fills

    def start_fill(
        self, app: web.Application, digest: Digest, *, tap: bool = False
    ) -> FillTap | None:
        """Start copying a blob into the local store, unless that is under way (not awaited).

        With ``tap``, the request asking gets the copy's chunks as they come
        (``origin.storage_fill``): a tap when this call started the copy, None
        when one was under way already (the caller then reads the bucket itself).
        """
        if digest in self._fills:
            return None
        taken = FillTap() if tap else None
        self._start(app, digest, taken)
        return taken

    def _start(
        self, app: web.Application, digest: Digest, tap: FillTap | None
    ) -> asyncio.Task[bool]:
        task = asyncio.get_running_loop().create_task(
            copy_in(app[STORE], self.backend, digest, tap)
        )
        self._fills[digest] = task
        task.add_done_callback(lambda done: self._filled(digest, done))
        return task

    def _filled(self, digest: Digest, task: asyncio.Task[bool]) -> None:
        if self._fills.get(digest) is task:
            del self._fills[digest]
        if not task.cancelled() and task.exception() is not None:
            log.warning("origin.read_through_failed error=%s", task.exception())

    async def close(self) -> None:
        fills = list(self._fills.values())
        for task in fills:
            task.cancel()
        await asyncio.gather(*fills, return_exceptions=True)
        await self.backend.close()


OBJECT_STORE = web.AppKey("krill_origin_object_store", ObjectStore)
# Set once install_object_storage has added its parts (a second call adds nothing).
INSTALLED = web.AppKey("krill_origin_object_storage_installed", bool)


def object_store_location(config: OriginConfig) -> S3Location | None:
    """The bucket the config names, or None for a directory origin."""
    storage = parse_storage_url(config.storage, config.s3_endpoint, config.s3_region)
    return storage if isinstance(storage, S3Location) else None


def install_object_storage(
    app: web.Application, config: OriginConfig, *, clock: Clock = SYSTEM_CLOCK
) -> None:
    """Add write-through and read-through to an origin app when its storage is a bucket.

    Call it on the app ``create_app`` returned, before it runs. The bucket is
    checked when the app starts: a missing bucket, rejected credentials or an
    unreachable endpoint stop the origin with a message saying which. With
    ``gc_interval`` set, the bucket is swept (origin.storage_gc) as often, and
    with ``local_cache_max_bytes`` the local copies are kept under it
    (origin.storage_cache), both timed on ``clock``.
    """
    location = object_store_location(config)
    if location is None or app.get(INSTALLED):
        return
    credentials = s3_credentials(config.s3_credentials)

    async def open_bucket(app: web.Application) -> AsyncIterator[None]:
        backend = S3Backend(location, credentials)
        try:
            await backend.client.check_bucket()
        except S3Error as exc:
            await backend.close()
            raise CliError(f"object storage unusable: {exc}") from None
        log.info(
            "origin.object_storage location=%s access_key=%s", location, credentials.access_key
        )
        app[OBJECT_STORE] = ObjectStore(backend)
        if not config.upstream:  # a mirror's metadata follows its upstream, in --data
            await _share_metadata(app, backend, clock)
        deltas = _share_deltas(app, backend)
        background = []
        if config.gc_interval > 0:
            background.append(asyncio.create_task(_sweep_periodically(app, clock)))
        if config.local_cache_max_bytes > 0:
            background.append(asyncio.create_task(_keep_cache_bounded(app, clock)))
        yield
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if deltas is not None:
            await deltas.close()
        await app[OBJECT_STORE].close()

    app.cleanup_ctx.append(open_bucket)
    if config.replicas and config.replica_url:  # config checks both are set together
        install_replicas(app, config.replicas, config.replica_url, replica_ssl_context(config))
    app.middlewares.append(bucket_sync(_write_blob))
    app.middlewares.insert(0, catalog_sync())  # outermost: see catalog_sync
    app[INSTALLED] = True


async def _share_metadata(app: web.Application, backend: S3Backend, clock: Clock) -> None:
    """Links and tags in the bucket too (origin.storage_metadata); stop if it refuses them."""
    app[METADATA] = BucketMetadata(app, backend, clock)
    try:
        await app[METADATA].publish_if_new()
    except S3Error as exc:
        await backend.close()
        raise CliError(f"cannot publish repository metadata to the bucket: {exc}") from None


def _share_deltas(app: web.Application, backend: S3Backend) -> BucketDeltas | None:
    """Deltas and their index in the bucket too, when the origin computes deltas."""
    # Imported here: origin.deltas is only needed when the origin computes deltas.
    from krill.origin.deltas import DELTA_ENGINE

    if DELTA_ENGINE not in app:
        return None
    deltas = BucketDeltas(app, backend, app[OBJECT_STORE], app[DELTA_ENGINE].index)
    app[BUCKET_DELTAS] = deltas
    return deltas


async def _write_blob(app: web.Application, digest: Digest) -> None:
    await app[OBJECT_STORE].write_through(app, digest)


def collect_bucket(config: OriginConfig, *, dry_run: bool) -> str | None:
    """``krill origin gc``'s bucket pass (after the local one); None for a directory origin."""
    location = object_store_location(config)
    if location is None:
        return None
    if config.upstream:
        return "bucket: skipped (a pull-through mirror's links are only in --data)"

    async def sweep() -> str:
        backend = S3Backend(location, s3_credentials(config.s3_credentials))
        try:
            await reconcile_with_bucket(backend, config.data, config.gc_grace, dry_run=dry_run)
            report = await sweep_bucket(backend, config.data, config.gc_grace, dry_run=dry_run)
        except S3Error as exc:
            raise CliError(f"cannot sweep the bucket: {exc}") from None
        finally:
            await backend.close()
        return report.line()

    return asyncio.run(sweep())


async def _sweep_periodically(app: web.Application, clock: Clock) -> None:
    """Every ``gc_interval``, collect the bucket (failures are logged).

    What it frees is counted in ``krill_origin_gc_freed_{objects,bytes}_total``
    with ``kind="bucket"``, beside the local collection's kinds.
    """
    config = app[CONFIG]
    metrics = app[METRICS]
    if config.upstream:  # a mirror: nothing in the bucket says what is linked
        return
    while True:
        await clock.sleep(config.gc_interval)
        backend = app[OBJECT_STORE].backend
        try:
            await reconcile_with_bucket(backend, config.data, config.gc_grace)
            report = await sweep_bucket(backend, config.data, config.gc_grace)
            metrics.gc_freed_objects.labels(BUCKET_KIND).inc(report.objects)
            metrics.gc_freed_bytes.labels(BUCKET_KIND).inc(report.bytes)
        except ConfigError as exc:  # the bucket holds no metadata yet: nothing to mark from
            log.info("gc.bucket_skipped reason=%s", exc)
        except Exception:
            log.exception("gc.bucket_failed")


async def _keep_cache_bounded(app: web.Application, clock: Clock) -> None:
    """Every ``CACHE_CHECK_INTERVAL``, evict local copies past ``local_cache_max_bytes``."""
    config = app[CONFIG]
    object_store = app[OBJECT_STORE]
    while True:
        await clock.sleep(CACHE_CHECK_INTERVAL)
        try:
            await evict_to_fit(
                app[STORE],
                app[REPOSITORIES],
                object_store.backend,
                config.local_cache_max_bytes,
                object_store.last_served,
                config.seed_ttl,
            )
        except Exception:
            log.exception("origin.cache_evict_failed")
