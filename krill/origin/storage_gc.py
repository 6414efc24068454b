"""Garbage collection of the bucket: mark from every manifest linked in it, sweep the rest.

The bucket holds the registry's metadata too (``origin.storage_metadata``:
links and tags under ``<prefix>/repositories/``), so it is collected by the
same rule as a data directory (``origin.gc``), read from the bucket:

* **mark**: every manifest a repository links in the bucket (and, for an
  origin on this machine, in ``--data``: a push links locally before it
  writes through), its config and layers, an index's children;
* **sweep**: an object written more than ``grace`` seconds ago that nothing
  marks and that no repository linked within the grace period (a blob
  uploaded whose manifest is still coming) is deleted, with its layer links
  in the bucket and in ``--data`` (and its local copy).

Safety beside serving origins, in batches of ``BATCH``:

* on this machine, each batch runs under the **exclusive** ``gc.lock``
  (``origin.gclock``), which a manifest push holds shared from its "are the
  blobs there" check to its local link, and a blob write-through holds
  shared while it asks the bucket whether the blob is there; so a push
  either finished before the batch (marked) or checks after it (told what
  to push again);
* for origins on other machines, which no lock reaches, each batch first
  lays a tombstone on each of its blobs (``origin.gctombstones``), then
  lists the bucket's links again, marks the manifests linked since the
  collection started, and keeps every blob a link appeared for since (a
  write-through puts the link before it asks for the bytes), and deletes a
  blob only if its tombstone is still there: a push that counts on a blob
  lifts its tombstone before it looks for the bytes, and a manifest push,
  once linked in the bucket, checks its blobs are still there
  (``storage_sync``: put back from its local copy, or 503). What remains is
  a delete between a push's look for the bytes and the batch's look at the
  tombstone just before it (``origin.gctombstones``).

A bucket with no repository metadata at all is refused: it was written by
an origin older than this metadata (whose links were only in its
``--data``), and sweeping it would empty it; an origin started on it
publishes its local links first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from krill import oci
from krill.blobbackend import BlobInfo, BlobMissingError
from krill.config import ConfigError
from krill.digests import Digest
from krill.origin import gctombstones as tombstones
from krill.origin.gc import CLOCK_SLACK
from krill.origin.gclock import GcLock
from krill.origin.repositories import Repositories
from krill.origin.storage_deltaindex import live_deltas
from krill.origin.storage_metadata import (
    MetaEntry,
    MetaKind,
    meta_key,
    metadata_entries,
    metadata_published,
)
from krill.s3backend import S3Backend

__all__ = ["BATCH", "BucketSweep", "held", "reconcile_with_bucket", "sweep_bucket"]

log = logging.getLogger(__name__)

BATCH = 256  # objects checked and deleted per hold of the exclusive lock
REPOSITORIES_DIR = "repositories"  # as origin.server lays out the data directory


@dataclass
class BucketSweep:
    """What a bucket sweep removed (or, dry, would remove)."""

    dry_run: bool
    objects: int = 0
    bytes: int = 0
    kept_recent: int = 0
    links: int = 0

    def line(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return f"bucket: {verb} {self.objects} objects, {self.bytes} bytes"


@contextlib.asynccontextmanager
async def held(lock: contextlib.AbstractContextManager[None]) -> AsyncIterator[None]:
    """Hold a blocking lock (a ``GcLock`` mode) across awaits; it is taken off the loop."""
    await asyncio.to_thread(lock.__enter__)
    try:
        yield
    finally:
        lock.__exit__(None, None, None)  # closes the descriptor: does not block


@dataclass
class _Links:
    """The bucket's metadata at one listing: manifests to mark, and layer links by blob."""

    manifests: dict[Digest, str]  # digest -> a repository linking it
    layers: dict[Digest, list[MetaEntry]]

    @classmethod
    def of(cls, entries: list[MetaEntry]) -> _Links:
        manifests: dict[Digest, str] = {}
        layers: dict[Digest, list[MetaEntry]] = {}
        for entry in entries:
            digest = entry.digest
            if digest is None:
                continue
            if entry.kind is MetaKind.MANIFEST:
                manifests.setdefault(digest, entry.repo)
            elif entry.kind is MetaKind.LAYER:
                layers.setdefault(digest, []).append(entry)
        return cls(manifests, layers)


class _Marker:
    """The live set, grown from manifests (each read once: bytes from --data or the bucket)."""

    def __init__(self, backend: S3Backend, data: Path) -> None:
        self.backend = backend
        self.store = BlobStoreReader(data)
        self.repos = Repositories(data / REPOSITORIES_DIR)
        self.live: set[Digest] = set()
        self.visited: set[Digest] = set()  # manifests read (a live blob may be one too: gc.py)

    async def mark(self, links: _Links) -> None:
        local = await asyncio.to_thread(self._local_manifests)
        for digest, repo in {**local, **links.manifests}.items():
            await self._mark_manifest(repo, digest)
        # Deltas shared through the bucket (origin.storage_deltas): kept with target and base.
        self.live |= await live_deltas(self.backend, self.live)

    def _local_manifests(self) -> dict[Digest, str]:
        return {d: repo for repo in self.repos.names() for d in self.repos.manifests(repo)}

    async def _mark_manifest(self, repo: str, digest: Digest) -> None:
        self.live.add(digest)
        if digest in self.visited:
            return
        self.visited.add(digest)
        body = await self._bytes(digest)
        media_type = await self._media_type(repo, digest)
        try:
            parsed = oci.parse_manifest(body, media_type) if body is not None else None
        except oci.ManifestError as exc:
            log.warning("gc.manifest_unreadable repo=%s digest=%s error=%s", repo, digest, exc)
            return
        if parsed is None:
            return
        self.live.update(d.digest for d in parsed.blob_references())
        for child in parsed.manifests:
            await self._mark_manifest(repo, child.digest)

    async def _bytes(self, digest: Digest) -> bytes | None:
        local = await asyncio.to_thread(self.store.read, digest)
        if local is not None:
            return local
        try:
            async with self.backend.open(digest) as reader:  # whole: a cut one marks nothing
                return b"".join([chunk async for chunk in reader.chunks])
        except BlobMissingError:
            return None

    async def _media_type(self, repo: str, digest: Digest) -> str | None:
        local = self.repos.manifest_media_type(repo, digest)
        if local is not None:
            return local
        stored = await self.backend.get_object(meta_key(repo, MetaKind.MANIFEST, digest.hex))
        return (stored.decode() or None) if stored else None


class BlobStoreReader:
    """Reads of ``--data``'s blob files, without opening a ``BlobStore`` (which clears
    ``incoming/``: beside a serving origin, its uploads in progress)."""

    def __init__(self, data: Path) -> None:
        self.root = data / "blobs"

    def path(self, digest: Digest) -> Path:
        return self.root / digest.algorithm / digest.hex[:2] / digest.hex

    def read(self, digest: Digest) -> bytes | None:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, digest: Digest) -> None:
        self.path(digest).unlink(missing_ok=True)


async def sweep_bucket(
    backend: S3Backend,
    data: Path,
    grace: float,
    *,
    dry_run: bool = False,
    now: Callable[[], float] = time.time,
    between: Callable[[], Awaitable[None]] | None = None,
    in_batch: Callable[[], Awaitable[None]] | None = None,
) -> BucketSweep:
    """Remove the bucket's objects no manifest references (see above)."""
    start = now()
    cutoff = start - grace - CLOCK_SLACK
    if not await metadata_published(backend):
        raise ConfigError(
            f"{backend.description} holds no repository metadata; not sweeping it, which "
            "would remove every object: start an origin of this version on it once (it "
            "publishes its links), or check the storage URL"
        )
    first = _Links.of(await metadata_entries(backend))
    marker = _Marker(backend, data)
    await marker.mark(first)
    report = BucketSweep(dry_run)
    old = [i async for i in backend.list() if i.modified < cutoff and i.digest not in marker.live]
    if between is not None:  # a test's hook: push while the collection is between its phases
        await between()
    lock = GcLock(data)
    for batch in _batches(old):
        async with held(lock.exclusive()):
            if not dry_run:  # before the links are read again (origin.gctombstones)
                await tombstones.lay(backend, (i.digest for i in batch))
            links = _Links.of(await metadata_entries(backend))  # pushes elsewhere since
            await marker.mark(links)
            names = await asyncio.to_thread(lambda: list(marker.repos.names()))
            if in_batch is not None:  # a test's hook: push after the batch read the links
                await in_batch()
            kept: list[Digest] = []
            for info in batch:
                if info.digest in marker.live:
                    kept.append(info.digest)
                    continue
                if _recently_linked(info.digest, first, links, (marker.repos, names), cutoff):
                    report.kept_recent += 1
                    kept.append(info.digest)
                    continue
                if not dry_run and not await tombstones.laid(backend, info.digest):
                    log.info("gc.bucket_kept_lifted digest=%s", info.digest)  # a push counts on it
                    report.kept_recent += 1
                    continue
                await _remove(backend, marker, info, links.layers.get(info.digest, []), report)
            if not dry_run:
                await tombstones.lift(backend, kept)
    log.info(
        "gc.bucket_done dry_run=%s objects=%d bytes=%d links=%d kept_recent=%d",
        dry_run,
        report.objects,
        report.bytes,
        report.links,
        report.kept_recent,
    )
    return report


def _recently_linked(
    digest: Digest,
    first: _Links,
    now: _Links,
    local: tuple[Repositories, list[str]],
    cutoff: float,
) -> bool:
    """Linked within the grace period, or since the collection began (in the bucket or here).

    "Since the collection began" is checked by presence, not by time: object
    times have one-second resolution, too coarse for ``--grace 0``.
    """
    before = {(e.repo, e.leaf) for e in first.layers.get(digest, [])}
    for entry in now.layers.get(digest, []):
        if entry.modified >= cutoff or (entry.repo, entry.leaf) not in before:
            return True
    repos, names = local
    return any(repos.blob_linked_since(repo, digest, cutoff) for repo in names)


async def _remove(
    backend: S3Backend,
    marker: _Marker,
    info: BlobInfo,
    links: list[MetaEntry],
    report: BucketSweep,
) -> None:
    report.objects += 1
    report.bytes += info.size
    report.links += len(links)
    if report.dry_run:
        return
    for entry in links:
        await backend.delete_object(meta_key(entry.repo, MetaKind.LAYER, entry.leaf))
    await backend.delete(info.digest)
    await tombstones.lift(backend, [info.digest])
    await asyncio.to_thread(_forget_locally, marker, info.digest)
    log.info("gc.bucket_removed digest=%s bytes=%d links=%d", info.digest, info.size, len(links))


def _forget_locally(marker: _Marker, digest: Digest) -> None:
    """The local copy and links of a blob the bucket no longer has (this origin's cache)."""
    for repo in marker.repos.names():
        marker.repos.unlink_blob(repo, digest)
    marker.store.delete(digest)


def _batches(items: list[BlobInfo]) -> Iterator[list[BlobInfo]]:
    for first in range(0, len(items), BATCH):
        yield items[first : first + BATCH]


async def reconcile_with_bucket(
    backend: S3Backend,
    data: Path,
    grace: float,
    *,
    dry_run: bool = False,
    now: Callable[[], float] = time.time,
) -> int:
    """Drop ``--data``'s manifest links and tags the bucket no longer has; return how many.

    They were deleted through another origin on the bucket, and this origin
    would otherwise go on answering for them from its cache; with them gone,
    this origin's local collection finds the blobs only they referenced and
    removes the local copies and links. Blob links are left to that
    collection: some are this origin's own by design (the deltas it links
    into repositories, which stay local). Only entries older than the grace
    period go: a push on this origin links locally first and writes to the
    bucket after. A bucket no origin has published to is left alone.
    """
    if not await metadata_published(backend):
        return 0
    entries = await metadata_entries(backend)
    published = {(e.repo, e.kind, e.leaf) for e in entries}
    cutoff = now() - grace - CLOCK_SLACK
    repos = Repositories(data / REPOSITORIES_DIR)
    dropped = await asyncio.to_thread(_drop_unpublished, repos, published, cutoff, dry_run)
    log.info("gc.reconciled dry_run=%s dropped=%d", dry_run, dropped)
    return dropped


def _drop_unpublished(
    repos: Repositories, published: set[tuple[str, MetaKind, str]], cutoff: float, dry_run: bool
) -> int:
    dropped = 0
    for repo in list(repos.names()):
        stale: list[tuple[MetaKind, str, Callable[[], object]]] = []
        for digest, mtime in repos.manifest_links(repo):
            if mtime < cutoff:
                unlink = partial(repos.unlink_manifest, repo, digest)
                stale.append((MetaKind.MANIFEST, digest.hex, unlink))
        for tag, mtime in repos.tag_times(repo):
            if mtime < cutoff:
                stale.append((MetaKind.TAG, tag, partial(repos.delete_tag, repo, tag)))
        for kind, leaf, drop in stale:
            if (repo, kind, leaf) in published:
                continue
            dropped += 1
            if not dry_run:
                drop()
                log.info("gc.unpublished_dropped repo=%s kind=%s name=%s", repo, kind.value, leaf)
    return dropped
