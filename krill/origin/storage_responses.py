"""A blob only the bucket holds, answered at once: streamed from the bucket, Range passed on.

On an origin whose storage is a bucket (``origin.storage``), a linked blob
the local cache lacks is answered from the bucket while a copy into the local
store starts in the background (verified, one copy however many ask). The
client gets its first byte after two round trips to the bucket (its size,
then the ranged GET), not after the whole blob was copied, which for a layer
of gigabytes would run into clients' header timeouts. Once the copy is in,
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
from krill.origin.blobresponses import blob_head_response, blob_headers
from krill.origin.storage import ObjectStore
from krill.registry_params import parse_range
from krill.s3backend import S3Error

__all__ = ["bucket_blob_response"]

log = logging.getLogger(__name__)


async def bucket_blob_response(
    request: web.Request, object_store: ObjectStore, digest: Digest
) -> web.StreamResponse | None:
    """The blob from the bucket (GET, with its Range) or its size (HEAD); None if not there."""
    size = await object_store.size(digest)
    if size is None:
        return None
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
                _cut_short(request)
                return response
    except BlobMissingError:  # deleted between the size and the read
        return None
    await response.write_eof()
    log.debug("origin.served_from_bucket digest=%s start=%d bytes=%d", digest, start, count)
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
