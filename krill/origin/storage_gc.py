"""Garbage collection of the bucket: remove objects no repository links any more.

The local collection (``origin.gc``) decides what is garbage by marking from
manifests, and removes a blob's file *and its repository links*. The bucket
holds only blobs and manifests that were linked when they were written
through, so its rule is simpler and follows the local one: an object whose
digest no repository links (as a blob or as a manifest) and which was
written more than ``grace`` seconds ago is removed. A blob the local
collection removed goes from the bucket on the sweep after it; a blob only
unlinked by ``DELETE /v2/<name>/blobs/<digest>`` from its last repository
goes too (nothing can serve it any more; a push links and writes it again).
Because the rule reads links, not local files, a blob missing from the local
cache but linked is never touched.

Safety beside a serving origin, with the same ``gc.lock`` as the local sweep
(``origin.gclock``):

* each batch checks the links and deletes under the **exclusive** lock;
* a manifest push checks that its blobs are linked, and links itself, under
  the **shared** lock (``origin.manifests``), so it either sees a blob
  before the batch (linked: kept) or after (missing: it says which to push);
* a write-through asks the bucket "do you have it?" under the **shared**
  lock, after the push linked the blob: if the answer is yes, no batch can
  have decided the object is unlinked and delete it afterwards.

A data directory with no repositories at all is refused: it is a fresh or
wrong ``--data``, and sweeping would empty the bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from krill.blobbackend import BlobBackend, BlobInfo
from krill.config import ConfigError
from krill.digests import Digest
from krill.origin.gclock import GcLock
from krill.origin.repositories import Repositories

__all__ = ["BATCH", "BucketSweep", "held", "sweep_bucket"]

log = logging.getLogger(__name__)

BATCH = 256  # objects checked and deleted per hold of the exclusive lock
REPOSITORIES_DIR = "repositories"  # as origin.server lays out the data directory


@dataclass
class BucketSweep:
    """What a bucket sweep removed (or, dry, would remove)."""

    dry_run: bool
    objects: int = 0
    bytes: int = 0
    kept_linked: int = 0

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


async def sweep_bucket(
    backend: BlobBackend,
    data: Path,
    grace: float,
    *,
    dry_run: bool = False,
    now: Callable[[], float] = time.time,
) -> BucketSweep:
    """Remove the bucket's objects that no repository in ``data`` links (see above)."""
    repos = Repositories(data / REPOSITORIES_DIR)
    if not (data / REPOSITORIES_DIR).is_dir() or next(repos.names(), None) is None:
        raise ConfigError(
            f"{data} has no repositories; not sweeping the bucket ({backend.description}), "
            "which would remove every object: pass the origin's own --data directory"
        )
    report = BucketSweep(dry_run)
    cutoff = now() - grace
    old = [info async for info in backend.list() if info.modified < cutoff]
    lock = GcLock(data)
    for batch in _batches(old):
        async with held(lock.exclusive()):
            linked = await asyncio.to_thread(_linked_among, repos, [i.digest for i in batch])
            for info in batch:
                if info.digest in linked:
                    report.kept_linked += 1
                    continue
                await _remove(backend, info, report)
    log.info(
        "gc.bucket_done dry_run=%s objects=%d bytes=%d kept_linked=%d",
        dry_run,
        report.objects,
        report.bytes,
        report.kept_linked,
    )
    return report


async def _remove(backend: BlobBackend, info: BlobInfo, report: BucketSweep) -> None:
    report.objects += 1
    report.bytes += info.size
    if not report.dry_run:
        await backend.delete(info.digest)
        log.info("gc.bucket_removed digest=%s bytes=%d", info.digest, info.size)


def _linked_among(repos: Repositories, digests: list[Digest]) -> set[Digest]:
    """Which of ``digests`` some repository links, as a blob or as a manifest."""
    linked: set[Digest] = set()
    for repo in repos.names():
        linked.update(repos.manifests(repo))
        linked.update(d for d in digests if repos.has_blob(repo, d))
    return linked


def _batches(items: list[BlobInfo]) -> Iterator[list[BlobInfo]]:
    for first in range(0, len(items), BATCH):
        yield items[first : first + BATCH]
