"""Tombstones: how a bucket collection and a push on another machine agree on a blob.

No lock reaches across machines, so the collection and the pushes meet in
the bucket, one small object per blob, ``gc/tombstones/<algorithm>/<hex>``:

* the **collection** lays a tombstone on each blob it means to remove,
  *before* it lists the links again and marks (``origin.storage_gc``), and
  deletes the blob only if its tombstone is still there just before the
  delete; then it removes the tombstone;
* a **push that counts on a blob being in the bucket** (a write-through that
  finds it already there; a manifest checking the blobs it names) first
  *lifts* the blob's tombstone, and only then looks for the bytes.

A push links before it lifts (its layer link, or its manifest link), so
either its link was in the bucket when the collection listed the links again
(marked, or linked since the collection began: kept), or its lift came after
the tombstone was laid: if before the collection's last look at the
tombstone, the blob is kept; if after, the push's own look for the bytes
follows the lift, so it finds the blob gone when the delete came first (and
puts it back from its local copy or answers 503, push again). What is left is
a delete landing between the push's look for the bytes and the
collection's look at the tombstone just before it: the time of one request,
not a batch. Closing even that needs a conditional delete the store enforces
(S3's ``If-Match`` on DELETE), which not every S3-compatible store has.

A tombstone left by a collection that died midway is harmless: a push lifts
it, and the next collection lays it again before it counts on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from krill.digests import Digest
from krill.s3backend import S3Backend

__all__ = ["TOMBSTONES", "laid", "lay", "lift", "tombstone_key"]

TOMBSTONES = "gc/tombstones/"


def tombstone_key(digest: Digest) -> str:
    return f"{TOMBSTONES}{digest.algorithm}/{digest.hex}"


async def lay(backend: S3Backend, digests: Iterable[Digest]) -> None:
    """Mark these blobs as about to be removed (before the collection's last marking)."""
    await asyncio.gather(*(backend.put_object(tombstone_key(d), b"") for d in digests))


async def lift(backend: S3Backend, digests: Iterable[Digest]) -> None:
    """A push counts on these blobs: take their tombstones off before looking for the bytes."""
    await asyncio.gather(*(backend.delete_object(tombstone_key(d)) for d in set(digests)))


async def laid(backend: S3Backend, digest: Digest) -> bool:
    """Whether the blob's tombstone is still there (no push lifted it)."""
    return await backend.object_modified(tombstone_key(digest)) is not None
