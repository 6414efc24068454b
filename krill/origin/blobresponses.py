"""The registry's answers for a blob: its headers, and the stored file sent with sendfile.

Blob GETs by repository, pull-through fills and piece fetches by digest all
answer with the same headers; they are built here once so the three paths
cannot drift apart. A committed file goes out as a ``BlobFileResponse``: an
``origin.sendfile.ThreadedFileResponse`` (aiohttp's FileResponse: 206 for a
``Range``, HEAD, conditional requests) whose ``Range`` is first checked by the
parser the agent uses too (``registry_params.parse_range``). aiohttp alone
answers a range it cannot satisfy with an empty 416 typed as the blob's
``application/octet-stream``, and serves ``bytes=-0`` (a suffix of nothing) as
the whole blob; the distribution spec wants 416 with its error JSON, code
``RANGE_INVALID`` (issue 20's bad-input corpus). Nothing is read into Python
memory or hashed on this path (blobs were verified when committed).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from krill.digests import Digest
from krill.origin.appkeys import STORE
from krill.origin.sendfile import ThreadedFileResponse
from krill.registry_errors import RegistryError
from krill.registry_params import API_HEADERS, parse_range

__all__ = [
    "FALLBACK_CHUNK_SIZE",
    "BlobFileResponse",
    "blob_file_response",
    "blob_head_response",
    "blob_headers",
    "stored_file_response",
    "stored_headers",
]

# FileResponse's read size when sendfile is unavailable (e.g. TLS); large is faster.
FALLBACK_CHUNK_SIZE = 1 << 20

# Headers of a blob answer that an error answer about the blob must not carry.
_BLOB_ONLY_HEADERS = ("Cache-Control", "Docker-Content-Digest", "Accept-Ranges")


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
    return BlobFileResponse(path, chunk_size=FALLBACK_CHUNK_SIZE, headers=stored_headers(digest))


def stored_headers(digest: Digest) -> dict[str, str]:
    """A committed blob's headers: ``blob_headers`` and those of an immutable, rangeable file."""
    return {**blob_headers(digest), "Accept-Ranges": "bytes", "Cache-Control": "max-age=31536000"}


def range_applies(request: web.BaseRequest, stat: os.stat_result) -> bool:
    """Whether aiohttp will act on the request's ``Range`` (no If-Range, or one still true)."""
    if_range = request.if_range
    return if_range is None or stat.st_mtime <= if_range.timestamp()


class BlobFileResponse(ThreadedFileResponse):
    """A stored blob whose unsatisfiable or malformed ``Range`` is the spec's 416 error JSON.

    The check runs where aiohttp has opened the file and passed its
    preconditions (If-Match, If-None-Match: those answer first, as RFC 9110
    orders them), so the size it checks against is the size sent. A range the
    parser accepts is left to aiohttp, which computes the same 206.
    """

    async def _prepare_open_file(
        self,
        request: web.BaseRequest,
        fobj: io.BufferedReader,
        st: os.stat_result,
        file_encoding: str | None,
    ) -> AbstractStreamWriter | None:
        if range_applies(request, st):
            try:
                parse_range(request.headers.get("Range"), st.st_size)
            except RegistryError as error:
                return await self._refuse(request, error)
        return await super()._prepare_open_file(request, fobj, st, file_encoding)

    async def _refuse(
        self, request: web.BaseRequest, error: RegistryError
    ) -> AbstractStreamWriter | None:
        """Answer ``error`` as the spec's JSON in place of the blob."""
        answer = error.response()
        assert isinstance(answer.body, bytes)
        for name in _BLOB_ONLY_HEADERS:
            self.headers.pop(name, None)
        self.headers.update(answer.headers)
        self.set_status(answer.status)
        self.content_length = len(answer.body)
        writer = await web.StreamResponse.prepare(self, request)
        if request.method != "HEAD":
            await self.write(answer.body)
        return writer
