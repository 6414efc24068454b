"""Blob GET/HEAD/DELETE: files straight from the store with sendfile.

``web.FileResponse`` (as ``origin.sendfile.ThreadedFileResponse``, whose
sendfile calls run off the event loop) serves the committed file with
``sendfile(2)`` and handles ``Range`` (206, and 416 past the end) and HEAD;
nothing is read into Python memory or hashed on this path (blobs were
verified when committed).
A blob is served under a repository only if it is linked there (pushed,
mounted or pulled through); see ``origin.repositories``.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from krill.digests import Digest
from krill.origin.appkeys import PULL_THROUGH, REPOSITORIES, STORE
from krill.origin.sendfile import ThreadedFileResponse
from krill.registry_errors import RegistryError
from krill.registry_params import API_HEADERS, parse_digest, repo_name

# FileResponse's read size when sendfile is unavailable (e.g. TLS); large is faster.
FALLBACK_CHUNK_SIZE = 1 << 20


def blob_file_response(app: web.Application, digest: Digest) -> web.FileResponse:
    """The committed blob as a sendfile response with the registry's headers."""
    return stored_file_response(app[STORE].path(digest), digest)


def stored_file_response(path: Path, digest: Digest) -> web.FileResponse:
    """A committed blob file (verified when committed) with the registry's headers."""
    return ThreadedFileResponse(
        path,
        chunk_size=FALLBACK_CHUNK_SIZE,
        headers={
            **API_HEADERS,
            "Docker-Content-Digest": str(digest),
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "Cache-Control": "max-age=31536000",
        },
    )


def blob_unknown(digest: Digest) -> RegistryError:
    return RegistryError(
        "BLOB_UNKNOWN",
        f"blob {digest} is not known in this repository",
        detail={"digest": str(digest)},
    )


async def get_blob(request: web.Request) -> web.StreamResponse:
    repo = repo_name(request)
    digest = parse_digest(request.match_info["digest"])
    app = request.app
    if app[REPOSITORIES].has_blob(repo, digest) and app[STORE].has(digest):
        return blob_file_response(app, digest)
    pull = app[PULL_THROUGH]
    if pull is not None:
        return await pull.serve_blob(request, repo, digest)
    raise blob_unknown(digest)


async def delete_blob(request: web.Request) -> web.Response:
    """Unlink the blob from the repository (the bytes stay while other repositories use them)."""
    repo = repo_name(request)
    digest = parse_digest(request.match_info["digest"])
    if not request.app[REPOSITORIES].unlink_blob(repo, digest):
        raise blob_unknown(digest)
    return web.Response(status=202, headers=API_HEADERS)


def routes() -> list[web.RouteDef]:
    path = "/v2/{name:.+}/blobs/{digest}"
    return [
        web.get(path, get_blob, name="blob"),  # also answers HEAD
        web.delete(path, delete_blob, name="blob_delete"),
    ]
