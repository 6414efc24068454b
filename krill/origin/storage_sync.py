"""Keeping an origin's repositories in step with its bucket, around the unchanged handlers.

One middleware (the innermost, installed by ``origin.storage``) does, per
route, what ``origin.storage_metadata`` describes:

* before a handler reads: the link or tag it will read is brought in from
  the bucket (blob and manifest GET/HEAD, the tags list, a mount's source,
  and before a delete the thing deleted, so the handler finds it); for the
  catalog, one manifest of each repository the bucket has and ``--data``
  lacks, and for the referrers API every manifest of the repository (storing
  one records it as its subject's referrer); before a delta lookup, the
  deltas other origins shared for it (``origin.storage_deltas``);
* after a handler wrote (its 201 or 202): blob bytes, then the link, then
  the tag go to the bucket before the client gets the answer. A bucket that
  refuses makes it 503 ``UNAVAILABLE`` ("push it again"): the change is
  made locally, and the retry repeats only the bucket's part. A manifest,
  once linked there, has its blobs checked in the bucket (a collection on
  another machine may have just removed one: put back, or 503).

So the upload, manifest and blob handlers stay as they are on a directory
origin. A pull-through mirror keeps its metadata in ``--data`` (its tags
follow its upstream, its fills are local): only the bytes pushed to it go
to the bucket. A bucket that fails while we only read is logged and the local
state answers: an origin keeps serving what it has while its bucket is
briefly away, and what it lacks is 503, not 404 (``found_or_unavailable``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from krill.digests import Digest, DigestError, is_digest
from krill.names import InvalidNameError, is_valid_name, validate_tag
from krill.origin.storage_deltas import BUCKET_DELTAS
from krill.origin.storage_metadata import METADATA, BucketMetadata
from krill.registry_errors import RegistryError
from krill.s3backend import S3Error

__all__ = ["BlobWriter", "bucket_sync", "catalog_sync"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Puts a just-committed local blob to the bucket (ObjectStore.write_through).
BlobWriter = Callable[[web.Application, Digest], Awaitable[None]]


def _digest(text: str | None) -> Digest | None:
    try:
        return Digest.parse(text or "")
    except DigestError:
        return None


def _tag(text: str) -> str | None:
    """A valid tag, else None (the handler then answers the error; no bucket request)."""
    try:
        return validate_tag(text)
    except InvalidNameError:
        return None


def _created(response: web.StreamResponse) -> Digest | None:
    """The digest a 201 answers with (what was just committed), else None."""
    if response.status != 201:
        return None
    return _digest(response.headers.get("Docker-Content-Digest"))


def unavailable(what: str, exc: S3Error) -> RegistryError:
    log.error("origin.metadata_write_failed what=%s error=%s", what, exc)
    return RegistryError(
        "UNAVAILABLE",
        f"{what} is stored on this origin but could not be written to its object store "
        f"({exc}); push it again",
        headers={"Retry-After": "10"},
    )


async def reading(what: str, step: Awaitable[object]) -> S3Error | None:
    """A read-through step; a failing bucket leaves the local state to answer.

    Returns the bucket's failure, if any, for ``found_or_unavailable``.
    """
    try:
        await step
    except S3Error as exc:
        log.warning("origin.metadata_read_failed what=%s error=%s", what, exc)
        return exc
    return None


async def found_or_unavailable(
    what: str, failure: S3Error | None, answer: Awaitable[web.StreamResponse]
) -> web.StreamResponse:
    """The handler's answer, but 503 for its 404 when the bucket could not be read.

    The local state answers while the bucket is away, but "unknown" is not
    true then: the bucket may well hold it (pushed through another origin),
    and clients take a 404 as final where a 503 is retried.
    """
    try:
        response = await answer
    except RegistryError as exc:
        if failure is None or exc.status != 404:
            raise
        raise _unreadable(what, failure) from None
    if failure is not None and response.status == 404:
        raise _unreadable(what, failure)
    return response


def _unreadable(what: str, exc: S3Error) -> RegistryError:
    return RegistryError(
        "UNAVAILABLE",
        f"{what} is not on this origin, and its object store, which may hold it, could not "
        f"be read ({exc}); try again",
        headers={"Retry-After": "10"},
    )


async def writing(what: str, step: Awaitable[None]) -> None:
    """A write-through step; a failing bucket is the client's 503."""
    try:
        await step
    except S3Error as exc:
        raise unavailable(what, exc) from None


class _Sync:
    """One request's view: the bucket's metadata, the blob writer, the repository."""

    def __init__(
        self, request: web.Request, metadata: BucketMetadata, put_blob: BlobWriter
    ) -> None:
        self.request = request
        self.metadata = metadata
        self.put_blob = put_blob
        self.repo = request.match_info["name"]

    async def blob_pushed(self, response: web.StreamResponse) -> None:
        """A blob (or mounted blob) answered 201: its link, then its bytes, to the bucket.

        The link goes first so a collection listing the bucket meanwhile sees the
        blob linked (and recent) before the bytes are checked for.
        """
        digest = _created(response)
        if digest is not None:
            await writing(str(digest), self.metadata.put_layer_link(self.repo, digest))
            await self.put_blob(self.request.app, digest)

    async def manifest_pushed(self, response: web.StreamResponse, tag: str | None) -> None:
        digest = _created(response)
        if digest is None:
            return
        await self.put_blob(self.request.app, digest)
        await writing(str(digest), self.metadata.put_manifest_link(self.repo, digest))
        await self.check_references(digest)
        if tag is not None:
            await writing(f"{self.repo}:{tag}", self.metadata.put_tag(self.repo, tag))
            await writing(f"{self.repo}:{tag}", self.metadata.put_history(self.repo, [tag]))

    async def check_references(self, digest: Digest) -> None:
        """503 (push again) if a blob the manifest names left the bucket and has no local copy
        here: a collection elsewhere removed it while the manifest was on its way."""
        app = self.request.app

        async def put_back(blob: Digest) -> None:
            await self.put_blob(app, blob)

        try:
            lost = await self.metadata.lost_references(self.repo, digest, put_back)
        except S3Error as exc:
            raise unavailable(str(digest), exc) from None
        if lost:
            log.error("origin.manifest_names_collected_blobs manifest=%s lost=%s", digest, lost)
            raise RegistryError(
                "UNAVAILABLE",
                f"a garbage collection removed {', '.join(map(str, lost[:10]))} while this "
                "manifest was pushed; push the image again (its blobs, then the manifest)",
                headers={"Retry-After": "1"},
            )


async def _blob(sync: _Sync, handler: Handler) -> web.StreamResponse:
    digest = _digest(sync.request.match_info["digest"])
    if digest is None:
        return await handler(sync.request)
    what = f"{sync.repo}@{digest}"
    failure = await reading(what, sync.metadata.read_layer_link(sync.repo, digest))
    return await found_or_unavailable(what, failure, handler(sync.request))


async def _blob_delete(sync: _Sync, handler: Handler) -> web.StreamResponse:
    response = await _blob(sync, handler)
    digest = _digest(sync.request.match_info["digest"])
    if response.status == 202 and digest is not None:
        await writing(str(digest), sync.metadata.delete_layer_link(sync.repo, digest))
    return response


async def _manifest_get(sync: _Sync, handler: Handler) -> web.StreamResponse:
    reference = sync.request.match_info["reference"]
    digest = _digest(reference)
    failure = None
    if digest is not None:
        what = f"{sync.repo}@{digest}"
        failure = await reading(what, sync.metadata.read_manifest(sync.repo, digest))
    elif (tag := _tag(reference)) is not None:
        what = f"{sync.repo}:{tag}"
        failure = await reading(what, sync.metadata.refresh_tag(sync.repo, tag))
    else:
        return await handler(sync.request)
    return await found_or_unavailable(what, failure, handler(sync.request))


async def _manifest_put(sync: _Sync, handler: Handler) -> web.StreamResponse:
    reference = sync.request.match_info["reference"]
    if is_digest(reference):
        response = await handler(sync.request)
        await sync.manifest_pushed(response, None)
        return response
    tag = _tag(reference)
    if tag is None:
        return await handler(sync.request)
    async with sync.metadata.tag_lock(sync.repo, tag):
        response = await handler(sync.request)
        await sync.manifest_pushed(response, tag)
    return response


async def _manifest_delete(sync: _Sync, handler: Handler) -> web.StreamResponse:
    reference = sync.request.match_info["reference"]
    metadata, repo = sync.metadata, sync.repo
    digest = _digest(reference)
    if digest is None:
        tag = _tag(reference)
        if tag is None:
            return await handler(sync.request)
        await reading(tag, metadata.refresh_tag(repo, tag, force=True))
        async with metadata.tag_lock(repo, tag):
            response = await handler(sync.request)
            if response.status == 202:
                await writing(f"{repo}:{tag}", metadata.put_tag(repo, tag))
                await writing(f"{repo}:{tag}", metadata.put_history(repo, [tag]))
        return response
    await reading(str(digest), metadata.read_manifest(repo, digest))
    await reading(repo, metadata.refresh_tags(repo, force=True))
    response = await handler(sync.request)
    if response.status == 202:
        await writing(str(digest), _delete_manifest(metadata, repo, digest))
    return response


async def _delete_manifest(metadata: BucketMetadata, repo: str, digest: Digest) -> None:
    tags = await metadata.delete_manifest(repo, digest)
    await metadata.put_history(repo, tags)


async def _referrers(sync: _Sync, handler: Handler) -> web.StreamResponse:
    await reading(sync.repo, sync.metadata.adopt_manifests(sync.repo))
    return await handler(sync.request)


async def _tags(sync: _Sync, handler: Handler) -> web.StreamResponse:
    failure = await reading(sync.repo, sync.metadata.refresh_tags(sync.repo))
    return await found_or_unavailable(sync.repo, failure, handler(sync.request))


async def _upload_start(sync: _Sync, handler: Handler) -> web.StreamResponse:
    query = sync.request.query
    source, digest = query.get("from"), _digest(query.get("mount"))
    if source and digest is not None and is_valid_name(source):
        await reading(str(digest), sync.metadata.read_layer_link(source, digest))
    return await _upload_finish(sync, handler)


async def _upload_finish(sync: _Sync, handler: Handler) -> web.StreamResponse:
    response = await handler(sync.request)
    await sync.blob_pushed(response)
    return response


# Routes whose 201 means "a blob or manifest was just committed to the local store".
BYTES_ROUTES = frozenset({"upload_start", "upload_finish", "manifest_put"})

SYNCED: dict[str, Callable[[_Sync, Handler], Awaitable[web.StreamResponse]]] = {
    "blob": _blob,
    "blob_delete": _blob_delete,
    "manifest": _manifest_get,
    "manifest_put": _manifest_put,
    "manifest_delete": _manifest_delete,
    "tags": _tags,
    "referrers": _referrers,
    "upload_start": _upload_start,
    "upload_finish": _upload_finish,
}


def bucket_sync(put_blob: BlobWriter) -> Middleware:
    """The middleware: each synced route's steps around its handler (see the module doc)."""

    @web.middleware
    async def sync(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.name or ""
        if route == "delta_lookup":
            await _adopt_deltas(request)
            return await handler(request)
        steps = SYNCED.get(route)
        if steps is None or not is_valid_name(request.match_info["name"]):
            return await handler(request)
        metadata = request.app.get(METADATA)
        if metadata is None:  # a mirror: its metadata stays local, only pushed bytes go up
            return await _bytes_only(request, handler, route, put_blob)
        return await steps(_Sync(request, metadata, put_blob), handler)

    return sync


def catalog_sync() -> Middleware:
    """Before ``/v2/_catalog``: the repositories other origins put in the bucket.

    Installed outermost, because with ``--auth`` the auth middleware answers
    the catalog itself (from the local repositories, filtered per caller)
    without reaching the inner handlers. The adoption lists the bucket at
    most once per ``TAG_TTL`` whoever asks, and reveals nothing: the catalog
    is still filtered as before.
    """

    @web.middleware
    async def sync(request: web.Request, handler: Handler) -> web.StreamResponse:
        metadata = request.app.get(METADATA)
        if request.match_info.route.name == "catalog" and metadata is not None:
            await reading("catalog", metadata.adopt_repositories())
        return await handler(request)

    return sync


async def _adopt_deltas(request: web.Request) -> None:
    """Before a delta lookup: the deltas other origins shared for it (origin.storage_deltas)."""
    deltas = request.app.get(BUCKET_DELTAS)
    target = _digest(request.match_info.get("digest"))
    if deltas is None or target is None:
        return
    have = [d for h in request.query.get("have", "").split(",")[:64] if (d := _digest(h))]
    repo = request.query.get("repo")
    repo = repo if repo and is_valid_name(repo) else None
    await reading(str(target), deltas.adopt(target, have, repo))


async def _bytes_only(
    request: web.Request, handler: Handler, route: str, put_blob: BlobWriter
) -> web.StreamResponse:
    response = await handler(request)
    digest = _created(response)
    if digest is not None and route in BYTES_ROUTES:
        await put_blob(request.app, digest)
    return response
