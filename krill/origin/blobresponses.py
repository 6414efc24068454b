"""The registry's answers for a blob: its headers, and the stored file sent with sendfile.

Blob GETs by repository, pull-through fills and piece fetches by digest all
answer with the same headers; they are built here once so the three paths
cannot drift apart. A committed file goes out as an
``origin.sendfile.ThreadedFileResponse``, which handles ``Range`` (206, and
416 past the end) and HEAD; nothing is read into Python memory or hashed on
this path (blobs were verified when committed).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from krill.digests import Digest
from krill.origin.appkeys import STORE
from krill.origin.sendfile import ThreadedFileResponse
from krill.registry_params import API_HEADERS

__all__ = [
    "FALLBACK_CHUNK_SIZE",
    "blob_file_response",
    "blob_head_response",
    "blob_headers",
    "stored_file_response",
]

# FileResponse's read size when sendfile is unavailable (e.g. TLS); large is faster.
FALLBACK_CHUNK_SIZE = 1 << 20


def blob_headers(digest: Digest) -> dict[str, str]:
    """What every blob answer carries, whatever sends the body."""
    return {
        **API_HEADERS,
        "Docker-Content-Digest": str(digest),
        "Content-Type": "application/octet-stream",
    }


def blob_head_response(digest: Digest, size: int | None) -> web.Response:
    """A HEAD answer for a blob not stored yet (its size as upstream declared it, if it did)."""
    headers = blob_headers(digest)
    if size is not None:
        headers["Content-Length"] = str(size)
    return web.Response(headers=headers)


def blob_file_response(app: web.Application, digest: Digest) -> web.FileResponse:
    """The committed blob as a sendfile response with the registry's headers."""
    return stored_file_response(app[STORE].path(digest), digest)


def stored_file_response(path: Path, digest: Digest) -> web.FileResponse:
    """A committed blob file (verified when committed) with the registry's headers."""
    return ThreadedFileResponse(
        path,
        chunk_size=FALLBACK_CHUNK_SIZE,
        headers={
            **blob_headers(digest),
            "Accept-Ranges": "bytes",
            "Cache-Control": "max-age=31536000",
        },
    )
