"""Blob GET/HEAD/DELETE: files straight from the store with sendfile.

``origin.blobresponses.blob_file_response`` (a ``web.FileResponse`` whose
sendfile calls run off the event loop) serves the committed file with
``sendfile(2)`` and handles ``Range`` (206, and 416 past the end) and HEAD;
nothing is read into Python memory or hashed on this path (blobs were
verified when committed). A blob the origin lacks is fetched by the
pull-through mirror when there is one.
A blob is served under a repository only if it is linked there (pushed,
mounted or pulled through); see ``origin.repositories``. On an origin whose
storage is a bucket (``origin.storage``), a linked blob missing from the local
store is streamed from the bucket while it is copied in
(``origin.storage_responses``).
"""

from __future__ import annotations

from aiohttp import web

from krill.origin.appkeys import REPOSITORIES, STORE
from krill.origin.blobresponses import blob_file_response
from krill.origin.errors import blob_unknown
from krill.origin.pullthrough import PULL_THROUGH
from krill.origin.storage import OBJECT_STORE
from krill.origin.storage_responses import bucket_blob_response
from krill.registry_params import API_HEADERS, parse_digest, repo_name


async def get_blob(request: web.Request) -> web.StreamResponse:
    repo = repo_name(request)
    digest = parse_digest(request.match_info["digest"])
    app = request.app
    if app[REPOSITORIES].has_blob(repo, digest):
        object_store = app.get(OBJECT_STORE)
        if app[STORE].has(digest):
            if object_store is not None:
                object_store.touch(digest)  # the bounded cache keeps it longest
            return blob_file_response(app, digest)
        if object_store is not None:
            from_bucket = await bucket_blob_response(request, object_store, digest)
            if from_bucket is not None:
                return from_bucket
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
