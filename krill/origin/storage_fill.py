"""A blob copied from the bucket into the local store, its bytes handed to a client on the way.

A cold GET (the local cache lacks the blob) used to read the object from the
bucket twice at once: one stream to the client, one background copy into
``--data``. Both compete for the store's bandwidth, and the copy cost most of
a cold GET's rate (docs/benchmarks.md, "Origin on S3"). Now the request that
finds no copy under way *starts* the copy and takes its chunks from it
through a ``FillTap``: one read of the object, written to the local store
(hashed as it goes) and relayed to the client.

The tap is bounded (``TAP_DEPTH`` chunks): a slow client slows the copy, and
memory stays a few chunks per cold GET. A client that goes away detaches; the
copy goes on alone, at the store's pace, so the next request finds the local
file. The copy runs in a task of its own (``ObjectStore._fills``), not in
the request's.

The client gets only verified bytes: the copy checks the digest of all it
read before it tells the tap it is done (the commit's fsync and rename come
after), and the response holds its last chunk back until then. A mismatch
drops the local file (the writer is aborted) and the response is cut short,
one chunk before its declared length, so the client sees a broken download,
never a complete wrong one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import Enum

from krill.blobbackend import BlobMissingError, DigestMismatchError
from krill.blobstore import BlobStore
from krill.digests import Digest
from krill.registry_errors import RegistryError
from krill.s3backend import S3Backend, S3Error

__all__ = ["TAP_DEPTH", "FillEnd", "FillTap", "Filled", "Opened", "copy_in"]

log = logging.getLogger(__name__)

# Chunks (1 MiB each from the S3 backend) a tap holds before the copy waits for its client.
TAP_DEPTH = 4


class Filled(Enum):
    """How a copy from the bucket ended."""

    FILLED = "filled"  # verified and committed to the local store
    MISSING = "missing"  # the bucket has no such object
    CORRUPT = "corrupt"  # the bucket's bytes do not hash to the digest: nothing stored
    FAILED = "failed"  # the bucket failed midway


@dataclass(frozen=True)
class Opened:
    """The first thing a tap gives: the object was found, with this size."""

    size: int


@dataclass(frozen=True)
class FillEnd:
    """The last thing a tap gives; after ``FILLED`` every chunk given was verified."""

    outcome: Filled
    reason: str = ""


class FillTap:
    """The chunks of one copy from the bucket, for the one response that started it."""

    def __init__(self, depth: int = TAP_DEPTH) -> None:
        self._queue: asyncio.Queue[Opened | bytes | FillEnd] = asyncio.Queue(depth)
        self._attached = True

    async def give(self, item: Opened | bytes | FillEnd) -> None:
        """Hand the response the next item (waits while it is ``depth`` behind)."""
        if self._attached:
            await self._queue.put(item)

    def end_now(self, end: FillEnd) -> None:
        """Tell the response the copy ended, without waiting (what it did not take is lost)."""
        if self._attached:
            while self._queue.full():
                self._queue.get_nowait()
            self._queue.put_nowait(end)

    async def next(self) -> Opened | bytes | FillEnd:
        return await self._queue.get()

    def detach(self) -> None:
        """The response is gone: drop what it did not take, and take nothing more."""
        self._attached = False
        while not self._queue.empty():  # each get wakes a copy waiting to put
            self._queue.get_nowait()


async def copy_in(
    store: BlobStore, backend: S3Backend, digest: Digest, tap: FillTap | None = None
) -> bool:
    """Copy a blob from the bucket into the local store (verified); False if it can't be.

    With a tap, each chunk goes to it too, and it is told the outcome only
    once the digest matched. Without one, a failing bucket is 503 ``UNAVAILABLE`` to
    whoever awaits the copy.
    """
    outcome, reason = Filled.FILLED, ""
    try:
        with store.writer() as writer:
            # One chunk is written (and hashed, in a thread) while the next is read.
            writing: asyncio.Future[None] | None = None
            try:
                async with backend.open(digest) as reader:
                    if tap is not None:
                        await tap.give(Opened(reader.size))
                    async for chunk in reader.chunks:
                        if tap is not None:
                            await tap.give(chunk)
                        if writing is not None:
                            await writing
                        writing = asyncio.ensure_future(asyncio.to_thread(writer.write, chunk))
                if writing is not None:
                    await writing
            finally:  # never abort the writer under a thread still writing to it
                if writing is not None and not writing.done():
                    await asyncio.wait([writing])
            actual = writer.digest()
            if actual != digest:
                raise DigestMismatchError(digest, actual)
            if tap is not None:  # verified: the client may have its last chunk before the fsync
                await tap.give(FillEnd(Filled.FILLED))
                tap = None
            await asyncio.to_thread(writer.commit, digest)
    except BlobMissingError:
        outcome = Filled.MISSING
    except DigestMismatchError as exc:  # damaged in the bucket: say so, keep nothing
        log.error("origin.read_through_corrupt digest=%s error=%s", digest, exc)
        outcome, reason = Filled.CORRUPT, str(exc)
    except S3Error as exc:
        if tap is None:
            raise RegistryError(
                "UNAVAILABLE", f"{digest} could not be read from the object store: {exc}"
            ) from None
        log.warning("origin.read_through_broken digest=%s error=%s", digest, exc)
        outcome, reason = Filled.FAILED, str(exc)
    except asyncio.CancelledError:  # shutdown: the response must not wait for ever
        if tap is not None:
            tap.end_now(FillEnd(Filled.FAILED, "the origin is shutting down"))
        raise
    except Exception as exc:  # the local disk (full, failing): tell the tap, cut it short
        if tap is None:
            raise
        log.exception("origin.read_through_failed digest=%s", digest)
        outcome, reason = Filled.FAILED, f"{exc.__class__.__name__}: {exc}"
    if tap is not None:
        await tap.give(FillEnd(outcome, reason))
    if outcome is Filled.FILLED:
        log.info("origin.read_through digest=%s", digest)
    return outcome is Filled.FILLED
