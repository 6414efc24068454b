"""The data directory as a bounded cache of the bucket (``local_cache_max_bytes``).

On an origin whose storage is a bucket every pushed blob is in the bucket
once its push was answered, so the local copy is a cache: when the local
blobs add up to more than ``local_cache_max_bytes``, the least recently
served are removed until they fit. A removed blob is then answered from the
bucket at once and copied back in the background (``origin.storage_responses``).

What is never removed:

* **manifests** linked in any repository: manifest GETs, the delta planner
  and the garbage collector's marking read them from the local store;
* **blobs served within ``protect_seconds``** (the origin's ``seed_ttl``): a
  blob being pulled is likely being seeded into the swarm and sent by piece
  claims, which read the local file;
* **blobs the bucket does not hold** (checked before each removal): a
  mirror's upstream fills and deltas are only local.

"Last served" is kept in memory (``ObjectStore.touch`` on every local blob
answer); after a restart, a blob's file time (its commit or fill) stands in.
A request already sending the file keeps its open descriptor, so removal
never cuts a response short. Removal races a delta computation about to open
the same file as garbage collection does: that pair's delta is then not made.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from krill.blobbackend import BlobBackend
from krill.blobstore import BlobStore
from krill.digests import Digest
from krill.origin.repositories import Repositories

__all__ = ["CacheEntry", "evict_to_fit", "plan_eviction"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheEntry:
    digest: Digest
    size: int
    last_used: float  # seconds since the epoch


def plan_eviction(
    store: BlobStore,
    repos: Repositories,
    limit: int,
    last_served: Mapping[Digest, float],
    protect_since: float,
) -> list[CacheEntry]:
    """The blobs to remove, least recently used first, until the rest fit in ``limit``.

    Blocking (stats every blob): run it in a thread.
    """
    entries = _local_entries(store, last_served)
    excess = sum(entry.size for entry in entries) - limit
    if excess <= 0:
        return []
    pinned = {digest for repo in repos.names() for digest in repos.manifests(repo)}
    chosen = []
    for entry in sorted(entries, key=lambda e: e.last_used):
        if excess <= 0:
            break
        if entry.digest in pinned or last_served.get(entry.digest, 0.0) >= protect_since:
            continue
        chosen.append(entry)
        excess -= entry.size
    return chosen


def _local_entries(store: BlobStore, last_served: Mapping[Digest, float]) -> list[CacheEntry]:
    entries = []
    for digest in store.digests():
        try:
            st = os.stat(store.path(digest))
        except FileNotFoundError:
            continue
        entries.append(CacheEntry(digest, st.st_size, last_served.get(digest, st.st_mtime)))
    return entries


async def evict_to_fit(
    store: BlobStore,
    repos: Repositories,
    backend: BlobBackend,
    limit: int,
    last_served: Mapping[Digest, float],
    protect_seconds: float,
    *,
    now: Callable[[], float] = time.time,
) -> int:
    """Remove local copies (only of blobs the bucket holds) until the cache fits; bytes freed."""
    protect_since = now() - protect_seconds
    plan = await asyncio.to_thread(
        plan_eviction, store, repos, limit, dict(last_served), protect_since
    )
    freed = 0
    for entry in plan:
        if not await backend.exists(entry.digest):
            continue
        if await asyncio.to_thread(store.delete, entry.digest):
            freed += entry.size
            log.info("origin.cache_evicted digest=%s bytes=%d", entry.digest, entry.size)
    if plan:
        log.info("origin.cache_fit limit=%d freed=%d candidates=%d", limit, freed, len(plan))
    return freed
