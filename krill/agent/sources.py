"""Where blob bytes come from: one interface, two implementations.

A ``BlobSource`` starts a ``Transfer`` for a digest. A transfer writes the blob
into the node's store and exposes how much of it may be read already:
``available`` bytes from offset 0 are safe to serve, ``wait_available`` waits
for more, ``wait_done`` returns the committed, sha256-verified file. The swarm
engine's ``krill.swarm.Download`` has exactly this shape (bytes are piece-hash
verified before they count as available); ``OriginHttpTransfer`` below is the
fallback that fetches from the origin's registry API with Range resume.

The HTTP transfer holds back its last byte until the whole blob has hashed to
the digest, so a client streaming from it can never receive a complete but
wrong body: a mismatch fails the transfer and the serving side aborts the
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import aiohttp

from krill.blobstore import BlobStore, BlobWriter, SizeMismatchError
from krill.digests import Digest
from krill.endpoints import BLOB_SOURCE_HEADER
from krill.errortext import error_text
from krill.originclient import OriginClient

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class SourceUnavailable(Exception):
    """This source cannot deliver the blob now (down, unknown blob, no peers)."""


class BlobNotFound(SourceUnavailable):
    """The origin says it does not have the blob (404)."""


class TransferFailed(Exception):
    """A committed transfer broke; its bytes must not be served as a whole blob."""


class Transfer(Protocol):
    @property
    def size(self) -> int: ...

    @property
    def partial_path(self) -> Path: ...

    @property
    def available(self) -> int:
        """Bytes from offset 0 that may be served (verified)."""
        ...

    async def wait_available(self, offset: int) -> int: ...

    async def wait_done(self) -> Path: ...

    def cancel(self) -> None: ...

    async def read(self, fd: int, offset: int, limit: int) -> bytes:
        """Some verified bytes from ``offset`` (fewer than ``limit - offset`` is fine)."""
        ...


class GrowingFile:
    """The reader's half of a transfer that writes one file front to back.

    ``available`` only grows, each rise sets ``_changed`` for waiting readers,
    and ``_done`` ends it with the committed path or a ``TransferFailed``. The
    origin fetch and the delta rebuild stream share this; they differ only in
    what makes bytes available (flushed, or piece-hash verified).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.available = 0
        self._changed = asyncio.Event()
        self._done: asyncio.Future[Path] = asyncio.get_running_loop().create_future()

    async def wait_available(self, offset: int) -> int:
        while True:
            if self._done.done():
                self._done.result()  # raises TransferFailed
                return self.available
            if self.available > offset:
                return self.available
            self._changed.clear()
            await self._changed.wait()

    async def wait_done(self) -> Path:
        return await asyncio.shield(self._done)

    async def read(self, fd: int, offset: int, limit: int) -> bytes:
        """Bytes the caller saw ``available`` (``limit`` stays within it): already on disk."""
        return await asyncio.to_thread(os.pread, fd, limit - offset, offset)

    def _fail(self, exc: Exception) -> None:
        if not self._done.done():
            self._done.set_exception(exc)
            self._done.exception()  # marked retrieved: readers may never call wait_done
        self._changed.set()


class BlobSource(Protocol):
    """Starts transfers; ``name`` labels metrics and logs ('swarm', 'origin')."""

    name: str

    async def start(self, digest: Digest, repository: str | None) -> Transfer:
        """Begin fetching; raise SourceUnavailable quickly when this source cannot."""
        ...


class OriginHttpSource:
    """Fetches blobs from the origin's pull API: ``GET /v2/<repo>/blobs/<digest>``."""

    name = "origin"

    def __init__(
        self,
        origin: OriginClient,
        store: BlobStore,
        *,
        timeout: float,
        resume_attempts: int = 5,
        on_bytes: Callable[[int], None] | None = None,
        room: RoomMaker | None = None,
    ) -> None:
        self._origin = origin
        self.store = store
        self._timeout = timeout
        self.resume_attempts = resume_attempts
        self.on_bytes = on_bytes
        self.room = room

    async def start(self, digest: Digest, repository: str | None) -> OriginHttpTransfer:
        if not self._origin.configured:
            raise SourceUnavailable("no origin configured")
        if repository is None:
            raise SourceUnavailable("HTTP fallback needs a repository name to ask the origin")
        response = await self.open_response(repository, digest, offset=0)
        size = _content_length(response)
        try:
            await ensure_room(self.store, digest, size, self.room)
        except BaseException:
            response.release()
            raise
        writer = self.store.writer()
        transfer = OriginHttpTransfer(self, repository, digest, size, writer, response)
        transfer.begin()
        return transfer

    async def open_response(
        self, repository: str, digest: Digest, offset: int
    ) -> aiohttp.ClientResponse:
        """Send the GET (with Range when resuming); raise SourceUnavailable on any failure."""
        url = self._origin.blob_url(repository, digest)
        timeouts = aiohttp.ClientTimeout(
            total=None,
            connect=self._timeout,
            sock_connect=self._timeout,
            sock_read=max(self._timeout, 30.0),
        )
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._origin.open_blob(
                    repository, digest, offset=offset, timeouts=timeouts
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SourceUnavailable(f"origin unreachable for {url}: {exc!r}") from None
        expected = 206 if offset else 200
        if response.status == 404:
            response.release()
            raise BlobNotFound(f"origin has no blob at {url}")
        if response.status != expected:
            response.release()
            raise SourceUnavailable(f"origin answered {response.status} for {url}")
        return response


def _content_length(response: aiohttp.ClientResponse) -> int:
    length = response.content_length
    if length is None:
        response.release()
        raise SourceUnavailable("origin sent a blob without Content-Length")
    return length


class RoomMaker(Protocol):
    """What frees disk for a blob: the node cache (``NodeCache.make_room``)."""

    async def make_room(self, needed: int) -> list[Digest]: ...


# Waits before resuming a broken origin transfer: doubling from the first, at most the last.
_RESUME_FIRST_DELAY = 0.5
_RESUME_MAX_DELAY = 8.0

# Left free beyond the blob itself once room had to be made: the index and sidecars.
_ROOM_MARGIN = 1 << 20


async def ensure_room(
    store: BlobStore, digest: Digest, size: int, room: RoomMaker | None
) -> None:
    """Refuse, before any byte is promised to a client, a blob the cache disk cannot hold,
    once ``room`` has evicted what it may (the disk may be shared, or the budget too big).

    Once a source is chosen the client gets its 200 and Content-Length, and a
    disk that fills mid-blob can only cut its connection: containerd retries
    this node and never moves on to the next host. A 503 now sends it there.
    (Another download can still take the room meanwhile; that pull is cut,
    nothing kept.) Every source calls this once it knows the size.
    """
    free = shutil.disk_usage(store.root).free
    if free < size and room is not None:
        evicted = await room.make_room(size + _ROOM_MARGIN)
        free = shutil.disk_usage(store.root).free
        log.info(
            "fetch.made_room digest=%s bytes=%d evicted=%d free=%d",
            digest, size, len(evicted), free,
        )  # fmt: skip
    if free < size:
        log.warning("fetch.no_room digest=%s bytes=%d free=%d", digest, size, free)
        raise SourceUnavailable(
            f"this node's cache disk has {free} bytes free, too few for {digest} "
            f"({size} bytes); free space under {store.root} or lower cache_budget"
        )


class OriginHttpTransfer(GrowingFile):
    """One blob streaming from the origin into the store, resuming with Range on breaks."""

    def __init__(
        self,
        source: OriginHttpSource,
        repository: str,
        digest: Digest,
        size: int,
        writer: BlobWriter,
        response: aiohttp.ClientResponse,
    ) -> None:
        super().__init__(size)
        self._source = source
        self._repository = repository
        self.digest = digest
        self._writer = writer
        self._response: aiohttp.ClientResponse | None = response
        # The origin is fetching it from its upstream registry as it sends it (metrics label).
        self.from_upstream = response.headers.get(BLOB_SOURCE_HEADER) == "upstream"
        self.partial_path = writer.path
        self._task: asyncio.Task[None] | None = None

    def begin(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"origin-fetch-{self.digest.hex[:12]}")

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        try:
            await self._copy_with_resume()
            digest = await asyncio.to_thread(self._writer.commit, self.digest, self.size)
            self.available = self.size
            self._done.set_result(self._source.store.path(digest))
            log.info("origin_fetch.done digest=%s bytes=%d", self.digest, self.size)
        except asyncio.CancelledError:
            self._discard()
            self._fail(TransferFailed("fetch from origin cancelled"))
            raise
        except Exception as exc:  # a mismatch, the origin gone, or the disk (ENOSPC, EIO)
            log.warning("origin_fetch.failed digest=%s error=%r", self.digest, error_text(exc))
            self._discard()
            self._fail(TransferFailed(f"fetch of {self.digest} from the origin failed: {exc}"))
        finally:
            if self._response is not None:
                self._response.release()
            self._changed.set()

    def _discard(self) -> None:
        """Drop the partial file; a disk that fails again while closing changes nothing."""
        with contextlib.suppress(OSError):
            self._writer.abort()

    def _write_and_flush(self, chunk: bytes) -> None:
        self._writer.write(chunk)
        self._writer.flush()

    async def _copy_with_resume(self) -> None:
        """Copy the body; after a break, ask again from where it stopped (``Range``).

        The waits double from ``_RESUME_FIRST_DELAY`` (15.5 s over five attempts,
        within the client's ``stall_timeout``): an origin restarting takes seconds,
        and 3 s of quick retries failed every pull in flight. A resumed body that
        brought bytes earns the next break a fresh count.
        """
        attempts, last_error = 0, "the connection broke"
        while self._writer.size < self.size:
            if self._response is None:
                attempts += 1
                if attempts > self._source.resume_attempts:
                    raise SourceUnavailable(
                        f"origin transfer broke {attempts - 1} times at byte "
                        f"{self._writer.size}; the last: {last_error}"
                    )
                delay = min(_RESUME_FIRST_DELAY * 2 ** (attempts - 1), _RESUME_MAX_DELAY)
                log.info(
                    "origin_fetch.resume digest=%s offset=%d attempt=%d in=%.1fs",
                    self.digest, self._writer.size, attempts, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                try:
                    self._response = await self._source.open_response(
                        self._repository, self.digest, self._writer.size
                    )
                except SourceUnavailable as exc:
                    last_error = str(exc)
                    log.info("origin_fetch.resume_failed digest=%s error=%s", self.digest, exc)
                continue
            before = self._writer.size
            while (chunk := await self._next_chunk(self._response)) is not None:
                await self._append(chunk)
                if self._writer.size > self.size:
                    raise SizeMismatchError("origin sent more bytes than it declared")
            self._response.release()
            self._response = None
            if self._writer.size > before:
                attempts = 0

    async def _next_chunk(self, response: aiohttp.ClientResponse) -> bytes | None:
        """The next bytes from the origin; None when the body ended or the connection broke.

        Only network errors are caught here (a break is resumed with Range); an
        error writing to the disk ends the transfer instead.
        """
        try:
            chunk = await response.content.read(CHUNK)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("origin_fetch.broken digest=%s error=%r", self.digest, error_text(exc))
            return None
        return chunk or None

    async def _append(self, chunk: bytes) -> None:
        """Write, hash and flush in a worker thread: a 1 MiB chunk is too much for the loop."""
        await asyncio.to_thread(self._write_and_flush, chunk)
        if self._source.on_bytes is not None:
            self._source.on_bytes(len(chunk))
        # The final byte becomes available only after the digest verified (see module doc).
        self.available = min(self._writer.size, self.size - 1)
        self._changed.set()
