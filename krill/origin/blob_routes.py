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
store is first copied in from the bucket (verified), then served the same way
(a HEAD is answered from the object's size, without the copy).
"""

from __future__ import annotations

from aiohttp import web

from krill.digests import Digest
from krill.origin.appkeys import REPOSITORIES, STORE
from krill.origin.blobresponses import blob_file_response, blob_head_response
from krill.origin.errors import blob_unknown
from krill.origin.pullthrough import PULL_THROUGH
from krill.origin.storage import OBJECT_STORE
from krill.registry_params import API_HEADERS, parse_digest, repo_name


async def get_blob(request: web.Request) -> web.StreamResponse:
    repo = repo_name(request)
    digest = parse_digest(request.match_info["digest"])
    app = request.app
    if app[REPOSITORIES].has_blob(repo, digest):
        if request.method == "HEAD" and not app[STORE].has(digest):
            head = await head_from_bucket(app, digest)
            if head is not None:
                return head
        if await stored_locally(app, digest):
            return blob_file_response(app, digest)
    pull = app[PULL_THROUGH]
    if pull is not None:
        return await pull.serve_blob(request, repo, digest)
    raise blob_unknown(digest)


async def stored_locally(app: web.Application, digest: Digest) -> bool:
    """Whether the local store has the blob, after filling it from the bucket if there is one."""
    if app[STORE].has(digest):
        return True
    object_store = app.get(OBJECT_STORE)
    return object_store is not None and await object_store.fill(app, digest)


async def head_from_bucket(app: web.Application, digest: Digest) -> web.Response | None:
    """A HEAD for a blob only the bucket holds, answered from its size: no copy for a HEAD."""
    object_store = app.get(OBJECT_STORE)
    size = None if object_store is None else await object_store.size(digest)
    return None if size is None else blob_head_response(digest, size)


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
