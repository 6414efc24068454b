"""The node cache: which blobs this node keeps, within a disk budget.

Blobs live in a ``krill.blobstore.BlobStore`` (the same store the swarm engine
downloads into and seeds from). This module keeps an index beside it
(``index.json``: size, when added, when last used) and decides what to evict:

* When the cached bytes pass ``high`` x budget, least-recently-used blobs go
  until they are under ``low`` x budget (two watermarks, so one eviction pass
  frees real room instead of running on every insert).
* A blob unused for ``max_age`` seconds goes whatever the usage.
* Pinned blobs (being served, being downloaded, or still seeding) never go.
* When a blob does not fit on the disk, whatever the budget says, least-recently-
  used blobs go until it does (``make_room``).

The index survives restarts, but a file on disk is only trusted once checked:
on start every indexed blob is size-checked at once and sha256-hashed by a
background thread; a blob that was not yet hashed is hashed before it is
served (``ensure_verified``), and a damaged one is deleted and reported as
missing so it is fetched again. A verified blob whose file changed since it was
hashed (size, modification time or inode: something wrote to it or replaced
it) is hashed again before it is served: its digest header would otherwise
vouch for bytes nobody checked, and a client failing the digest retries
into the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from krill.atomicfile import write_atomic
from krill.blobstore import BlobStore
from krill.digests import Digest, DigestError, sha256_file

log = logging.getLogger(__name__)

INDEX_VERSION = 1


@dataclass
class CacheEntry:
    size: int
    added: float
    last_used: float
    verified: bool = False
    # Seeding keeps a blob pinned until then (the swarm reads it in place).
    pinned_until: float = 0.0
    # The file as it was when its bytes were verified (``file_stamp``); not in the index.
    stamp: FileStamp | None = None


# (size, mtime in ns, inode): a write or a replacement since changes one of them.
FileStamp = tuple[int, int, int]


def file_stamp(path: Path) -> FileStamp | None:
    """The file's stamp, None when it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass(frozen=True)
class CacheLimits:
    budget: int
    high: float = 0.90
    low: float = 0.75
    max_age: float = 14 * 24 * 3600.0


class NodeCache:
    """Index, pins and eviction policy over one ``BlobStore``."""

    def __init__(
        self,
        store: BlobStore,
        limits: CacheLimits,
        *,
        clock: Callable[[], float] = time.time,
        on_evict: Callable[[Digest, str], None] | None = None,
    ) -> None:
        self.store = store
        self.limits = limits
        self._clock = clock
        self._on_evict = on_evict
        self._index_path = store.root / "index.json"
        self._entries: dict[Digest, CacheEntry] = {}
        self._pins: dict[Digest, int] = {}
        self._verify_locks: dict[Digest, asyncio.Lock] = {}
        self._dirty = False
        self._save_lock = asyncio.Lock()

    # ---- start-up -------------------------------------------------------

    def load(self) -> None:
        """Read the index and reconcile it with the store; size-check every blob.

        Blobs in the store but not in the index (the agent died between commit
        and index save) are adopted, unverified; index entries whose file is
        missing or has the wrong size are dropped.
        """
        recorded = self._read_index()
        now = self._clock()
        on_disk = set(self.store.digests())
        for digest in on_disk:
            size = self.store.size(digest)
            entry = recorded.get(digest)
            if size is None:
                continue
            if entry is not None and entry.size != size:
                log.warning(
                    "cache.damaged digest=%s reason=size recorded=%d found=%d",
                    digest,
                    entry.size,
                    size,
                )
                self._forget(digest, "damaged")
                self.store.delete(digest)
                continue
            if entry is None:
                entry = CacheEntry(size=size, added=now, last_used=now)
            entry.verified = False
            entry.pinned_until = 0.0
            self._entries[digest] = entry
        for digest in set(recorded) - on_disk:
            log.info("cache.missing digest=%s", digest)
        self._dirty = True
        self.save()
        log.info("cache.loaded blobs=%d bytes=%d", len(self._entries), self.usage)

    async def verify_all(self, executor: Executor | None = None) -> list[Digest]:
        """Hash every not-yet-verified blob (in ``executor``'s threads). Returns the damaged."""
        damaged = []
        for digest in list(self._entries):
            if not await self.ensure_verified(digest, executor):
                damaged.append(digest)
        return damaged

    async def recheck(self, digest: Digest, executor: Executor | None = None) -> bool:
        """Hash a blob again even if it passed before (its bytes were just found wanting)."""
        entry = self._entries.get(digest)
        if entry is None:
            return False
        entry.verified = False
        return await self.ensure_verified(digest, executor)

    async def ensure_verified(self, digest: Digest, executor: Executor | None = None) -> bool:
        """True when the blob is cached and its bytes are known good; hash it now if needed.

        Only the hashing runs in a worker thread; the index is read and changed on
        the event loop alone (eviction iterates it there).
        """
        entry = self._entries.get(digest)
        if entry is None:
            return False
        if entry.verified:
            if file_stamp(self.store.path(digest)) == entry.stamp:  # one stat, no read
                return True
            log.warning("cache.changed_on_disk digest=%s: hashing it again", digest)
            entry.verified = False
        lock = self._verify_locks.setdefault(digest, asyncio.Lock())
        try:
            async with lock:
                return await self._verify(digest, executor)
        finally:
            if not lock.locked():
                self._verify_locks.pop(digest, None)

    async def _verify(self, digest: Digest, executor: Executor | None) -> bool:
        entry = self._entries.get(digest)
        if entry is None or entry.verified:
            return entry is not None
        loop = asyncio.get_running_loop()
        stamp = file_stamp(self.store.path(digest))  # before: a write while hashing shows later
        actual = await loop.run_in_executor(executor, self._hash_file, digest)
        if self._entries.get(digest) is not entry:  # evicted or replaced while hashing
            current = self._entries.get(digest)
            return current is not None and current.verified
        if actual == digest:
            entry.verified, entry.stamp = True, stamp
            return True
        log.warning("cache.damaged digest=%s reason=sha256 found=%s", digest, actual)
        self._forget(digest, "damaged")
        await asyncio.to_thread(self._delete_files, [digest])
        return False

    def _hash_file(self, digest: Digest) -> Digest | None:
        """The file's sha256 (None when it is gone). Blocking; touches no shared state."""
        try:
            return sha256_file(str(self.store.path(digest)))
        except FileNotFoundError:
            return None

    # ---- lookups and updates ---------------------------------------------

    def has(self, digest: Digest) -> bool:
        return digest in self._entries

    def entry(self, digest: Digest) -> CacheEntry | None:
        return self._entries.get(digest)

    def path(self, digest: Digest) -> Path:
        return self.store.path(digest)

    @property
    def usage(self) -> int:
        return sum(e.size for e in self._entries.values())

    def touch(self, digest: Digest) -> None:
        """Record a use (for LRU)."""
        entry = self._entries.get(digest)
        if entry is not None:
            entry.last_used = self._clock()
            self._dirty = True

    async def add(self, digest: Digest, *, pin_for: float = 0.0) -> list[Digest]:
        """Index a blob just committed to the store (verified by the writer); may evict others.

        The evicted files (possibly gigabytes) are unlinked and the index written
        in a worker thread, not on the event loop.
        """
        stamp = await asyncio.to_thread(file_stamp, self.store.path(digest))
        if stamp is None:
            raise FileNotFoundError(f"blob {digest} is not in the store")
        now = self._clock()
        self._entries[digest] = CacheEntry(
            size=stamp[0],
            added=now,
            last_used=now,
            verified=True,
            pinned_until=now + pin_for if pin_for else 0.0,
            stamp=stamp,
        )
        self._dirty = True
        return await self.trim()

    async def trim(self) -> list[Digest]:
        """Apply the limits; delete what they evicted and save the index, off the loop."""
        evicted = self.enforce_limits()
        await asyncio.to_thread(self._delete_files, evicted)
        await self.save_async()
        return evicted

    @contextlib.contextmanager
    def pinned(self, digest: Digest) -> Iterator[None]:
        """Keep ``digest`` out of eviction while the block runs (nestable)."""
        self._pins[digest] = self._pins.get(digest, 0) + 1
        try:
            yield
        finally:
            left = self._pins[digest] - 1
            if left:
                self._pins[digest] = left
            else:
                del self._pins[digest]

    def is_pinned(self, digest: Digest) -> bool:
        entry = self._entries.get(digest)
        seeding = entry is not None and entry.pinned_until > self._clock()
        return digest in self._pins or seeding

    # ---- eviction -------------------------------------------------------

    def enforce_limits(self) -> list[Digest]:
        """Drop expired blobs, then LRU blobs past the high watermark down to the low one.

        Only the index changes here; the caller deletes the returned blobs' files
        (``trim`` does, in a worker thread).
        """
        evicted = self._expire()
        high = self.limits.budget * self.limits.high
        low = self.limits.budget * self.limits.low
        usage = self.usage
        if usage <= high:
            return evicted
        for size in self._evict_lru(evicted, "lru"):
            usage -= size
            if usage <= low:
                break
        if usage > low:
            log.warning("cache.over_budget bytes=%d low=%d pinned=%d", usage, low, len(self._pins))
        return evicted

    async def make_room(self, needed: int) -> list[Digest]:
        """Evict unpinned blobs, least recently used first, until the cache disk has
        ``needed`` bytes free or nothing more may go; returns what went.

        The budget alone does not protect the disk: it may be shared (containerd's
        content store, logs) or set larger than the disk. A node whose disk filled
        up answered 503 to every new blob while holding evictable ones, until they
        aged out (``max_age``, days).
        """
        free = (await asyncio.to_thread(shutil.disk_usage, self.store.root)).free
        evicted: list[Digest] = []
        if free < needed:
            for size in self._evict_lru(evicted, "disk_full"):
                free += size
                if free >= needed:
                    break
        if evicted:
            await asyncio.to_thread(self._delete_files, evicted)
            await self.save_async()
        return evicted

    def _evict_lru(self, evicted: list[Digest], reason: str) -> Iterator[int]:
        """Forget unpinned blobs, least recently used first, appending each to ``evicted``
        and yielding its size; the caller stops the iteration when it has enough."""
        for digest, entry in sorted(self._entries.items(), key=lambda kv: kv[1].last_used):
            if self.is_pinned(digest):
                continue
            self._forget(digest, reason)
            evicted.append(digest)
            yield entry.size

    def _expire(self) -> list[Digest]:
        cutoff = self._clock() - self.limits.max_age
        old = [
            d for d, e in self._entries.items() if e.last_used < cutoff and not self.is_pinned(d)
        ]
        for digest in old:
            self._forget(digest, "age")
        return old

    def _forget(self, digest: Digest, reason: str) -> None:
        """Take a blob out of the index (event loop only); its file is deleted by the caller."""
        self._entries.pop(digest, None)
        self._dirty = True
        log.info("cache.evict digest=%s reason=%s", digest, reason)
        if self._on_evict is not None:
            self._on_evict(digest, reason)

    def _delete_files(self, digests: list[Digest]) -> None:
        """Unlink evicted blobs (blocking). One re-added since it was evicted is kept."""
        for digest in digests:
            if digest not in self._entries:
                self.store.delete(digest)

    # ---- persistence ----------------------------------------------------

    def save(self) -> None:
        """Write the index atomically when it changed (blocking: start-up and shutdown)."""
        if self._dirty:
            write_atomic(self._index_path, self._index_document())
            self._dirty = False

    async def save_async(self) -> None:
        """``save`` with the disk write in a worker thread (the document is built here)."""
        async with self._save_lock:  # one write at a time, so the newest lands last
            if self._dirty:
                text = self._index_document()
                self._dirty = False
                await asyncio.to_thread(write_atomic, self._index_path, text)

    def _index_document(self) -> str:
        return json.dumps(
            {
                "version": INDEX_VERSION,
                "blobs": {
                    str(d): {"size": e.size, "added": e.added, "last_used": e.last_used}
                    for d, e in self._entries.items()
                },
            }
        )

    def _read_index(self) -> dict[Digest, CacheEntry]:
        try:
            doc = json.loads(self._index_path.read_text())
            blobs = doc["blobs"]
            out = {}
            for key, value in blobs.items():
                out[Digest.parse(key)] = CacheEntry(
                    size=int(value["size"]),
                    added=float(value["added"]),
                    last_used=float(value["last_used"]),
                )
            return out
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError, DigestError) as exc:
            log.warning("cache.index_unreadable path=%s error=%s", self._index_path, exc)
            return {}
