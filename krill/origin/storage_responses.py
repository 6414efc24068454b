"""A blob only the bucket holds, answered at once: streamed from the bucket, Range passed on.

On an origin whose storage is a bucket (``origin.storage``), a linked blob
the local cache lacks is answered from the bucket while a copy into the local
store is made (verified, one copy however many ask). A whole-blob GET that
finds no copy under way starts it and is answered from its chunks
(``origin.storage_fill``: the object is read once, and the response ends only
after the digest matched); a ranged GET, a HEAD and a GET arriving while a
copy is under way read the bucket themselves. The client gets its first byte
after one or two round trips to the bucket, not after the whole blob was
copied, which for a layer of gigabytes would run into clients' header
timeouts. Once the copy is in,
later requests get the local file with sendfile, and the swarm seed and the
piece claims (which read local files) can serve it.

The range is parsed as for a local blob (``registry_params.parse_range``: a
malformed or unsatisfiable one is 416 ``RANGE_INVALID`` with ``Content-Range:
bytes */SIZE``) and sent to the bucket as is. The bytes streamed are the
bucket's, verified when they were put there (and again by the background
copy, and by every registry client against the digest); a connection to the
bucket that drops midway cuts the response short, as the client then sees.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from krill.blobbackend import BlobMissingError
from krill.digests import Digest
from krill.httpmetrics import CutReason, mark_cut
from krill.origin.blobresponses import blob_head_response, blob_headers
from krill.origin.storage import ObjectStore
from krill.origin.storage_fill import Filled, FillEnd, FillTap, Opened
from krill.origin.storage_replicas import REPLICAS
from krill.registry_errors import RegistryError
from krill.registry_params import parse_range
from krill.s3backend import S3Error

__all__ = ["bucket_blob_response"]

log = logging.getLogger(__name__)


async def bucket_blob_response(
    request: web.Request, object_store: ObjectStore, digest: Digest
) -> web.StreamResponse | None:
    """The blob from the bucket (GET, with its Range) or its size (HEAD); None if not there."""
    replicas = request.app.get(REPLICAS)
    # Of several origins on one bucket, only the blob's owner keeps a copy of it.
    caching = replicas is None or replicas.owns(digest)
    if caching and request.method == "GET" and "Range" not in request.headers:
        tap = object_store.start_fill(request.app, digest, tap=True)
        if tap is not None:  # this request started the copy: answered from its chunks
            return await _tapped_response(request, tap, digest)
    size = await object_store.size(digest)
    if size is None:
        return None
    if caching:
        object_store.start_fill(request.app, digest)
    if request.method == "HEAD":
        return blob_head_response(digest, size)
    wanted = parse_range(request.headers.get("Range"), size)
    start, count = (0, size) if wanted is None else (wanted.start, wanted.length)
    response = web.StreamResponse(
        status=200 if wanted is None else 206,
        headers={**blob_headers(digest), "Accept-Ranges": "bytes"},
    )
    if wanted is not None:
        response.headers["Content-Range"] = f"bytes {start}-{wanted.end - 1}/{size}"
    response.content_length = count
    try:
        async with object_store.open(digest, start, count) as reader:
            await response.prepare(request)
            if not await _relay(reader.chunks, response, digest):
                mark_cut(request, CutReason.STORAGE_FAILED)
                _cut_short(request)
                return response
    except BlobMissingError:  # deleted between the size and the read
        return None
    await response.write_eof()
    log.debug("origin.served_from_bucket digest=%s start=%d bytes=%d", digest, start, count)
    return response


async def _tapped_response(
    request: web.Request, tap: FillTap, digest: Digest
) -> web.StreamResponse | None:
    """The whole blob, from the copy into the local store this request started.

    The last chunk is held back until the copy has verified the digest, so a
    client never receives a complete body that does not match it: on a
    mismatch (or a bucket failing midway) the response stops one chunk short
    and the connection is closed.
    """
    response = web.StreamResponse(
        status=200, headers={**blob_headers(digest), "Accept-Ranges": "bytes"}
    )
    try:
        first = await tap.next()
        if isinstance(first, FillEnd):  # nothing read: no object, or the bucket failed
            if first.outcome is Filled.MISSING:
                return None
            raise RegistryError(
                "UNAVAILABLE", f"{digest} could not be read from the object store: {first.reason}"
            )
        assert isinstance(first, Opened)
        response.content_length = first.size
        await response.prepare(request)
        held: bytes | None = None
        while not isinstance(item := await tap.next(), FillEnd):
            assert isinstance(item, bytes)
            if held is not None:
                await response.write(held)
            held = item
        if item.outcome is not Filled.FILLED:
            log.warning(
                "origin.bucket_stream_broken digest=%s outcome=%s reason=%s",
                digest,
                item.outcome.value,
                item.reason,
            )
            mark_cut(request, CutReason.STORAGE_FAILED)
            _cut_short(request)
            return response
        if held is not None:
            await response.write(held)
        await response.write_eof()
    except ConnectionError:  # the client went away
        mark_cut(request, CutReason.CLIENT_GONE)
        log.debug("origin.bucket_stream_client_gone digest=%s", digest)
        return response
    finally:
        tap.detach()  # the copy goes on without this response
    log.debug("origin.served_from_bucket_copy digest=%s", digest)
    return response


async def _relay(
    chunks: AsyncIterator[bytes], response: web.StreamResponse, digest: Digest
) -> bool:
    """Copy the bucket's body to the client; False if the bucket broke off (headers are out)."""
    try:
        async for chunk in chunks:
            await response.write(chunk)
    except S3Error as exc:
        log.warning("origin.bucket_stream_broken digest=%s error=%s", digest, exc)
        return False
    return True


def _cut_short(request: web.Request) -> None:
    """End the connection: with the status sent, a short body is all a client can be told."""
    if request.transport is not None:
        request.transport.close()
