"""Turning a blob on this node into an HTTP response (GET/HEAD, with Range).

* A cached blob is sent with ``krill.sendfile.ThreadedFileResponse``
  (aiohttp's ``FileResponse``: Range, 416, HEAD; its ``sendfile`` bursts run
  on worker threads), pinned in the cache until the last byte is out.
* A blob still arriving is streamed from the transfer's partial file: bytes
  are sent only once the transfer reports them available (piece-verified and
  in the file for the swarm), in order. On a plain TCP connection each run of
  available bytes goes out with ``sendfile`` from the partial file's
  descriptor (which stays valid when the file is renamed into the store);
  on TLS, where the kernel cannot copy, it is ``pread`` into Python and
  ``write``. The profile of issue 16 put 13 % of a herd agent's samples in
  the ``send`` of those chunks and 5 % in their ``pread`` (half of it the
  kernel faulting in fresh pages for each new 1 MiB buffer); sendfile has
  neither the read nor the buffer. The blob's last byte stays back until
  the transfer has checked the whole digest (``available`` holds it back).
  Headers go out only after a source has committed (the fetcher returns
  only then). If the transfer fails midway the connection is aborted, so the
  client sees a short body, never a wrong complete one.

Each whole-blob GET reports its time to first byte and its total time, by
source, from the request's arrival (``krill.httpmetrics.stopwatch``: the
source choice counts, it is what the client waits for). A Range GET is not
timed: a resumed tail says nothing about how long a pull takes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Protocol

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from krill.agent.cache import NodeCache
from krill.agent.fetcher import CachedBlob, InflightBlob, wait_progress
from krill.agent.metrics import PullSource
from krill.agent.ranges import ByteRange, parse_range
from krill.agent.sources import OriginHttpTransfer, TransferFailed
from krill.httpmetrics import CutReason, Stopwatch, mark_cut, stopwatch
from krill.registry_errors import API_HEADERS, RegistryError
from krill.sendfile import RawSocket, ThreadedFileResponse, raw_socket, send_file_range

log = logging.getLogger(__name__)

CHUNK = 1 << 20
OCTET_STREAM = "application/octet-stream"


class PullMetrics(Protocol):
    """What serving reports (``AgentMetrics`` in the agent)."""

    def served(self, source: str, count: int) -> None: ...

    def pull_first_byte(self, source: str, seconds: float) -> None: ...

    def pull_done(self, source: str, seconds: float) -> None: ...


class PullTimer:
    """One whole-blob GET's first and last byte, each reported once (or never, untimed)."""

    def __init__(self, metrics: PullMetrics, source: str, watch: Stopwatch | None) -> None:
        self._metrics = metrics
        self._source = source
        self._watch = watch
        self._first_reported = False

    def first_byte(self) -> None:
        if self._watch is not None and not self._first_reported:
            self._first_reported = True
            self._metrics.pull_first_byte(self._source, self._watch.elapsed())

    def done(self) -> None:
        if self._watch is not None:
            self._metrics.pull_done(self._source, self._watch.elapsed())


class PinnedFileResponse(ThreadedFileResponse):
    """A FileResponse that keeps its blob pinned in the cache until it has been sent."""

    def __init__(
        self, cache: NodeCache, blob: CachedBlob, timer: PullTimer, **kwargs: object
    ) -> None:
        # kwargs are FileResponse's own keywords (headers, status), passed through as given.
        super().__init__(blob.path, chunk_size=CHUNK, **kwargs)  # type: ignore[arg-type]
        self._timer = timer
        self._pin = cache.pinned(blob.digest)
        self._pin.__enter__()

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        """Headers and body go out together here (sendfile): the first byte leaves now."""
        try:
            self._timer.first_byte()
            writer = await super().prepare(request)
            self._timer.done()
            return writer
        finally:
            self._pin.__exit__(None, None, None)


def blob_headers(blob: CachedBlob | InflightBlob) -> dict[str, str]:
    return {
        "Docker-Content-Digest": str(blob.digest),
        "Accept-Ranges": "bytes",
        "Content-Type": OCTET_STREAM,
        **API_HEADERS,
    }


def pull_source(blob: CachedBlob | InflightBlob) -> str:
    """The pull histograms' source: the blob's, with the origin's upstream fills told apart."""
    transfer = blob.transfer if isinstance(blob, InflightBlob) else None
    if isinstance(transfer, OriginHttpTransfer) and transfer.from_upstream:
        return PullSource.UPSTREAM
    return blob.source


async def head_response(
    request: web.Request, blob: CachedBlob | InflightBlob
) -> web.StreamResponse:
    """Headers only, with the blob's real Content-Length."""
    response = web.StreamResponse(status=200, headers=blob_headers(blob))
    response.content_length = blob.size
    await response.prepare(request)
    await response.write_eof()
    return response


async def blob_response(
    request: web.Request,
    blob: CachedBlob | InflightBlob,
    cache: NodeCache,
    metrics: PullMetrics,
    stall_timeout: float = 60.0,
) -> web.StreamResponse:
    """GET (or HEAD) response for ``blob``, honouring a Range header.

    A transfer that makes no progress for ``stall_timeout`` seconds mid-stream is
    cancelled and the connection aborted, so the client retries (and the next
    attempt can fall back to HTTP) instead of hanging.
    """
    byte_range = parse_range(request.headers.get("Range"), blob.size)
    if request.method == "HEAD":
        return await head_response(request, blob)
    timer = PullTimer(metrics, pull_source(blob), None if byte_range else stopwatch(request))
    if isinstance(blob, CachedBlob):
        # Bytes served count the node's own disk as the cache, rebuilt or not.
        metrics.served("cache", byte_range.length if byte_range else blob.size)
        return PinnedFileResponse(cache, blob, timer, headers=blob_headers(blob))
    with cache.pinned(blob.digest):
        whole = ByteRange(0, blob.size)
        return await _stream(request, blob, byte_range or whole, metrics, timer, stall_timeout)


async def _stream(
    request: web.Request,
    blob: InflightBlob,
    byte_range: ByteRange,
    metrics: PullMetrics,
    timer: PullTimer,
    stall_timeout: float,
) -> web.StreamResponse:
    partial = byte_range.length != blob.size
    response = web.StreamResponse(status=206 if partial else 200, headers=blob_headers(blob))
    if partial:
        response.headers["Content-Range"] = byte_range.content_range(blob.size)
    response.content_length = byte_range.length
    fd = await _open_blob_file(blob)
    raw = raw_socket(request)
    position = byte_range.start
    try:
        if byte_range.end < blob.size:
            await _wait_verified(blob, stall_timeout)
        await response.prepare(request)
        while position < byte_range.end:
            available = await wait_progress(blob, position, stall_timeout)
            if raw is not None:
                upto = min(available, byte_range.end)
                await _send_verified(raw, fd, blob, position, upto, metrics, timer)
                position = upto
                continue
            upto = min(available, byte_range.end, position + CHUNK)
            data = await blob.transfer.read(fd, position, upto)
            if not data:
                raise TransferFailed(f"partial file of {blob.digest} is shorter than reported")
            await response.write(data)
            timer.first_byte()
            metrics.served(blob.source, len(data))
            position += len(data)
        await response.write_eof()
        timer.done()
    except TransferFailed as exc:
        log.warning("serve.aborted digest=%s error=%s", blob.digest, exc)
        mark_cut(request, CutReason.TRANSFER_FAILED, position - byte_range.start)
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError:  # the client went away: nobody to answer
        mark_cut(request, CutReason.CLIENT_GONE, position - byte_range.start)
    finally:
        os.close(fd)
    return response


async def _wait_verified(blob: InflightBlob, stall_timeout: float) -> None:
    """Until the whole blob has hashed to its digest (its last byte is out).

    Every source holds back a blob's last byte until then, which keeps a streamed
    whole body from ever being complete and wrong. A range that stops short of
    the end would not wait for that: its bytes are only piece-checked (the swarm)
    or not checked at all (the origin over HTTP), yet the client gets them as a
    complete 206 (security review, stop 39). So such a range waits for the digest.
    """
    position = 0
    while position < blob.size:
        position = await wait_progress(blob, position, stall_timeout)


async def _send_verified(
    raw: RawSocket,
    fd: int,
    blob: InflightBlob,
    start: int,
    end: int,
    metrics: PullMetrics,
    timer: PullTimer,
) -> None:
    """Bytes ``start``..``end`` with sendfile: the transfer counts them as verified
    (piece-checked and in the file), so they no longer change."""
    timer.first_byte()
    await send_file_range(raw, fd, start, end - start)
    metrics.served(blob.source, end - start)


async def _open_blob_file(blob: InflightBlob) -> int:
    """An fd on the partial file, or on the committed blob if the transfer already finished.

    The fd stays valid when the partial file is renamed into the store.
    """
    try:
        return os.open(blob.transfer.partial_path, os.O_RDONLY)
    except FileNotFoundError:
        pass
    with contextlib.suppress(TransferFailed):
        path = await blob.transfer.wait_done()
        return os.open(path, os.O_RDONLY)
    raise RegistryError("UNAVAILABLE", f"the transfer of {blob.digest} failed; retry")
