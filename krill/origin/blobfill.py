"""One upstream download per blob, streamed to any number of clients at their own pace.

A ``BlobFill`` downloads a blob from the upstream registry into the store in
a task that belongs to no client, so a client that reads slowly (or never)
slows only itself: the download, and every other client, go on. Clients
stream from the growing temp file (each with its own read position, using
``pread`` on a duplicate of the fill's descriptor, which stays valid after
the file is renamed into the store). The last byte is held back from every
client until the whole blob has been verified against its digest, so no
client ever receives a complete body that does not match; on a mismatch
their connections are cut.

Writes are done in a thread, hashing included, so the event loop never does
the disk or sha256 work: batched (``WRITE_BATCH`` bytes) while upstream is
faster than the disk, else as bytes arrive, so clients of a slow upstream
are not kept waiting for a batch to fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from krill.blobstore import BlobStore, BlobWriter, DigestMismatchError, SizeMismatchError
from krill.digests import Digest
from krill.errortext import error_text
from krill.httpmetrics import CutReason, mark_cut
from krill.origin.batching import Batches
from krill.registry_errors import RegistryError

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
WRITE_BATCH = 2 << 20
SEND_CHUNK = 1 << 20


class UpstreamBlobCorrupt(Exception):
    """The upstream sent bytes that do not match the blob's digest; the transfer was cut."""


# What the fill calls to get the upstream body: an async context manager
# yielding (declared size or None, the body's aiohttp.StreamReader).
OpenUpstream = Callable[
    [], contextlib.AbstractAsyncContextManager[tuple[int | None, aiohttp.StreamReader]]
]


class BlobFill:
    """Downloads one blob into the store; clients ``stream`` it while it arrives."""

    def __init__(
        self,
        store: BlobStore,
        repo: str,
        digest: Digest,
        open_upstream: OpenUpstream,
        on_committed: Callable[[], Awaitable[None] | None],
    ) -> None:
        self.store = store
        self.repo = repo
        self.digest = digest
        self._open_upstream = open_upstream
        self._on_committed = on_committed
        loop = asyncio.get_running_loop()
        self.headers: asyncio.Future[int | None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        for future in (self.headers, self.done):
            # Nobody may be waiting; don't warn about an unretrieved exception then.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.written = 0  # bytes in the temp file, readable by clients
        self._fd: int | None = None
        self._progress = asyncio.Event()
        self.task = loop.create_task(self._run())

    # the download

    async def _run(self) -> None:
        try:
            async with self._open_upstream() as (size, body):
                with self.store.writer() as writer:
                    self._fd = os.open(writer.path, os.O_RDONLY)
                    self.headers.set_result(size)
                    await self._download(body, writer)
                    await self._commit(writer, size)
            result = self._on_committed()
            if result is not None:
                await result
            self.done.set_result(None)
        except BaseException as exc:
            self._fail(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._notify()

    async def _download(self, body: aiohttp.StreamReader, writer: BlobWriter) -> None:
        async for batch in Batches(body, READ_CHUNK, WRITE_BATCH):
            await self._append(writer, batch)

    async def _append(self, writer: BlobWriter, batch: list[bytes]) -> None:
        await asyncio.to_thread(_write_and_flush, writer, batch)
        self.written = writer.size
        self._notify()

    async def _commit(self, writer: BlobWriter, size: int | None) -> None:
        try:
            await asyncio.to_thread(writer.commit, self.digest, size)
        except (DigestMismatchError, SizeMismatchError) as exc:
            log.error("upstream.blob_corrupt digest=%s error=%s", self.digest, exc)
            raise UpstreamBlobCorrupt(str(exc)) from None

    def _fail(self, exc: BaseException) -> None:
        for future in (self.headers, self.done):
            if future.done():
                continue
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(_as_error(exc))

    def _notify(self) -> None:
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    def cancel(self) -> None:
        self.task.cancel()

    @property
    def committed(self) -> bool:
        return self.done.done() and not self.done.cancelled() and self.done.exception() is None

    # the clients

    async def stream(
        self, request: web.Request, headers: dict[str, str]
    ) -> web.StreamResponse | None:
        """Send the blob as it arrives; raise (before any byte) if the fetch failed early.

        None: the blob was committed before this client started; serve the stored file.
        """
        size = await asyncio.shield(self.headers)
        if self.done.done() or self._fd is None:
            await asyncio.shield(self.done)  # raises if it failed
            return None
        fd = os.dup(self._fd)
        response = web.StreamResponse(headers=headers)
        if size is not None:
            response.content_length = size
        try:
            await response.prepare(request)
            await self._send_from(fd, request, response)
            await response.write_eof()
        except ConnectionError as exc:  # gone, or cut by us: the fetch goes on regardless
            mark_cut(request, CutReason.CLIENT_GONE)  # unless marked as cut by us
            log.info("upstream.client_gone digest=%s reason=%s", self.digest, exc)
        finally:
            os.close(fd)
        return response

    async def _send_from(self, fd: int, request: web.Request, response: web.StreamResponse) -> None:
        offset = 0
        while True:
            progress = self._progress
            if self.done.done() and not self.committed:
                mark_cut(request, CutReason.UPSTREAM_FAILED, offset)
                _cut(request)
                raise ConnectionResetError(f"fetching {self.digest} from upstream failed")
            # Hold the last byte back until the blob is verified.
            limit = self.written if self.committed else self.written - 1
            if offset < limit:
                count = min(limit - offset, SEND_CHUNK)
                data = await asyncio.to_thread(os.pread, fd, count, offset)
                if not data:
                    raise UpstreamBlobCorrupt(f"{self.digest}: temp file shorter than written")
                await response.write(data)
                offset += len(data)
            elif self.committed:
                return
            else:
                await progress.wait()


def _write_and_flush(writer: BlobWriter, batch: list[bytes]) -> None:
    for chunk in batch:
        writer.write(chunk)
    writer.flush()


def _cut(request: web.Request) -> None:
    """Close the connection so the client sees a truncated body, never a wrong one."""
    transport = request.transport
    if transport is not None:
        transport.close()


def _as_error(exc: BaseException) -> BaseException:
    """What clients waiting on a failed fetch are told."""
    if isinstance(exc, RegistryError | asyncio.CancelledError):
        return exc
    if isinstance(exc, UpstreamBlobCorrupt):
        return RegistryError("UNAVAILABLE", f"the upstream blob is corrupt: {exc}", status=502)
    log.warning("upstream.blob_failed error=%r", error_text(exc))
    return RegistryError(
        "UNAVAILABLE",
        f"fetching the blob from upstream failed: {exc.__class__.__name__}",
        status=502,
    )
