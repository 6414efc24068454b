"""Retention for a pull-through mirror: forget manifests nobody asked for, or the oldest ones.

A mirror's store only grows: every manifest it fetched keeps its blobs live
for garbage collection. So before a collection marks, a mirror (an origin
with ``upstream``) evicts from its repositories:

* every manifest not asked for in ``cache_max_age`` seconds (0: no limit);
* then, while the blobs still referenced add up to more than
  ``cache_max_bytes`` (0: no limit), the least recently asked-for manifest.

Evicting unlinks the manifest and its tags (no tag history line: it is not
a tag move, and the tag comes back from upstream on the next request); the
collection that follows removes the blobs nothing else references, once
they are older than its grace period. "Asked for" is the manifest's access
stamp (``Repositories.stamp_access``, written by the mirror when it serves a
manifest, at most once per ``STAMP_INTERVAL``), or its link's mtime when it
has none. Sizes count each blob once, however many manifests share it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from krill import oci
from krill.blobstore import BlobStore
from krill.digests import Digest
from krill.origin.repositories import Repositories

__all__ = ["STAMP_INTERVAL", "CacheLimits", "evict"]

log = logging.getLogger(__name__)

STAMP_INTERVAL = 600.0  # seconds: access stamps are this coarse (a write per manifest at most)


@dataclass(frozen=True, slots=True)
class CacheLimits:
    max_age: float = 0.0  # seconds since last asked for; 0: no limit
    max_bytes: int = 0  # referenced blob bytes; 0: no limit


@dataclass(frozen=True, slots=True)
class _Cached:
    repo: str
    digest: Digest
    accessed: float
    blobs: frozenset[Digest]  # itself, its config, layers, child manifests and theirs


def evict(store: BlobStore, repos: Repositories, limits: CacheLimits, now: float) -> int:
    """Unlink the manifests past the limits; return how many."""
    cached = sorted(_cached(store, repos), key=lambda c: c.accessed)
    users: dict[Digest, int] = {}
    for entry in cached:
        for blob in entry.blobs:
            users[blob] = users.get(blob, 0) + 1
    total = sum(store.size(blob) or 0 for blob in users)
    evicted = 0
    for entry in cached:  # least recently asked for first
        too_old = limits.max_age > 0 and entry.accessed < now - limits.max_age
        too_big = limits.max_bytes > 0 and total > limits.max_bytes
        if not (too_old or too_big):
            continue
        for blob in entry.blobs:
            users[blob] -= 1
            if users[blob] == 0:
                total -= store.size(blob) or 0
        _forget(repos, entry)
        evicted += 1
    return evicted


def _cached(store: BlobStore, repos: Repositories) -> list[_Cached]:
    found = []
    for repo in repos.names():
        for digest in repos.manifests(repo):
            found.append(
                _Cached(
                    repo,
                    digest,
                    repos.last_access(repo, digest),
                    _closure(store, repos, repo, digest),
                )
            )
    return found


def _closure(store: BlobStore, repos: Repositories, repo: str, digest: Digest) -> frozenset[Digest]:
    """The manifest and every blob and child manifest it references."""
    seen: set[Digest] = set()
    todo = [digest]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            parsed = oci.parse_manifest(
                store.read_bytes(current), repos.manifest_media_type(repo, current)
            )
        except (OSError, oci.ManifestError):
            continue
        seen.update(d.digest for d in parsed.blob_references())
        todo.extend(child.digest for child in parsed.manifests)
    return frozenset(seen)


def _forget(repos: Repositories, entry: _Cached) -> None:
    for tag in repos.tags_pointing_to(entry.repo, entry.digest):
        repos.delete_tag(entry.repo, tag)
    repos.unlink_manifest(entry.repo, entry.digest)
    repos.clear_access(entry.repo, entry.digest)
    log.info(
        "gc.evicted repo=%s manifest=%s accessed=%.0f", entry.repo, entry.digest, entry.accessed
    )
