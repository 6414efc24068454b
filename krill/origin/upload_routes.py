"""Blob uploads: monolithic (POST or POST-PUT), chunked (POST-PATCH-PUT), mounts.

Bytes stream from the request into a ``BlobWriter`` (hashed as they arrive)
and become a blob only when the closing PUT's digest matches. A body that
ends early, a chunk that does not start where the last one ended, or a wrong
digest leaves nothing in the store.
"""

from __future__ import annotations

import asyncio
import logging
import re

import aiohttp
from aiohttp import web

from krill.blobstore import BlobWriter, DigestMismatchError, SizeMismatchError
from krill.digests import Digest
from krill.names import is_valid_name
from krill.origin.appkeys import BLOB_PUSHED, CALLER_USER, REPOSITORIES, STORE, UPLOADS
from krill.origin.batching import Batches, BodyIdle
from krill.origin.uploads import UploadSession
from krill.registry_errors import RegistryError
from krill.registry_params import API_HEADERS, parse_decimal, parse_digest, repo_name

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
# Bytes gathered before one write (with its sha256) runs in a thread: large enough
# that thread hops don't dominate, small enough to bound memory per upload.
WRITE_BATCH = 4 << 20
# Seconds an upload body may send nothing before it is refused (408) and its file and
# connection are let go: a stalled pusher (or many) held them forever (security review).
BODY_IDLE_TIMEOUT = 60.0
# ASCII digits only; read with parse_decimal (int() raises past 4,300 digits: a 500).
_CONTENT_RANGE_RE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$", re.ASCII)


async def receive_body(request: web.Request, writer: BlobWriter) -> int:
    """Stream the request body into ``writer``; return the bytes received.

    Writing and hashing run in a thread, off the event loop: a batch at a
    time while the client sends faster than we write, else as bytes arrive.
    """
    batches = Batches(request.content, READ_CHUNK, WRITE_BATCH, idle=BODY_IDLE_TIMEOUT)
    try:
        async for batch in batches:
            await asyncio.to_thread(_write_all, writer, batch)
    except (aiohttp.ClientError, ConnectionError, asyncio.IncompleteReadError) as exc:
        raise RegistryError(
            "BLOB_UPLOAD_INVALID",
            f"the upload body ended early after {batches.received} bytes "
            f"({exc.__class__.__name__}); restart the upload",
        ) from None
    except BodyIdle as exc:
        raise RegistryError(
            "BLOB_UPLOAD_INVALID",
            f"the upload body stopped after {batches.received} bytes ({exc}); restart the upload",
            status=408,
        ) from None
    return batches.received


def _write_all(writer: BlobWriter, batch: list[bytes]) -> None:
    for chunk in batch:
        writer.write(chunk)


def announce_pushed(app: web.Application, digest: Digest) -> None:
    """Tell the BLOB_PUSHED hooks (seeding makes the blob's metainfo ahead of the first pull)."""
    for hook in app.get(BLOB_PUSHED, []):
        hook(digest)


async def commit(writer: BlobWriter, digest: Digest) -> None:
    """Verify and publish (fsync off the event loop); a mismatch leaves nothing."""
    try:
        await asyncio.to_thread(writer.commit, digest)
    except DigestMismatchError as exc:
        raise RegistryError(
            "DIGEST_INVALID", f"{exc}; nothing was stored", detail={"digest": str(digest)}
        ) from None
    except SizeMismatchError as exc:
        raise RegistryError("SIZE_INVALID", str(exc)) from None


def blob_created(repo: str, digest: Digest) -> web.Response:
    return web.Response(
        status=201,
        headers={
            **API_HEADERS,
            "Location": f"/v2/{repo}/blobs/{digest}",
            "Docker-Content-Digest": str(digest),
        },
    )


def session_headers(session: UploadSession) -> dict[str, str]:
    return {
        **API_HEADERS,
        "Location": f"/v2/{session.repo}/blobs/uploads/{session.id}",
        "Range": session.range_header(),
        "Docker-Upload-UUID": session.id,
    }


async def start_upload(request: web.Request) -> web.Response:
    repo = repo_name(request)
    app = request.app
    if "mount" in request.query:
        mounted = try_mount(app, repo, request.query["mount"], request.query.get("from"))
        if mounted is not None:
            return blob_created(repo, mounted)
    if "digest" in request.query:
        return await monolithic_upload(request, repo, parse_digest(request.query["digest"]))
    session = app[UPLOADS].start(repo, request.get(CALLER_USER))
    return web.Response(status=202, headers=session_headers(session))


def try_mount(app: web.Application, repo: str, mount: str, source: str | None) -> Digest | None:
    """Link a blob from ``source`` into ``repo``; None (start an upload instead) if it can't."""
    digest = parse_digest(mount, what="mount digest")
    if not source or not is_valid_name(source):
        return None
    if not (app[REPOSITORIES].has_blob(source, digest) and app[STORE].has(digest)):
        return None
    app[REPOSITORIES].link_blob(repo, digest)
    log.info("blob.mounted repo=%s from=%s digest=%s", repo, source, digest)
    return digest


async def monolithic_upload(request: web.Request, repo: str, digest: Digest) -> web.Response:
    app = request.app
    with app[STORE].writer() as writer:
        await receive_body(request, writer)
        await commit(writer, digest)
    app[REPOSITORIES].link_blob(repo, digest)
    log.info("blob.pushed repo=%s digest=%s", repo, digest)
    announce_pushed(app, digest)
    return blob_created(repo, digest)


def find_session(request: web.Request, repo: str) -> UploadSession:
    session_id = request.match_info["uuid"]
    session = request.app[UPLOADS].get(repo, session_id)
    if session is None:
        raise RegistryError(
            "BLOB_UPLOAD_UNKNOWN",
            f"upload {session_id[:80]!r} is not in progress here (it finished, failed, the "
            "origin restarted, or it was begun on another origin replica: an upload session "
            "lives on the replica that began it); start the upload again",
        )
    return session


def check_content_range(request: web.Request, session: UploadSession) -> int | None:
    """A chunk must start where the previous one ended: its length, when it says one.

    A ``Content-Length`` that contradicts the range is refused here; a chunked
    body's length is known only once received (``receive_chunk`` checks it).
    """
    text = request.headers.get("Content-Range")
    if text is None:
        return None
    match = _CONTENT_RANGE_RE.match(text.strip())
    if match is None:
        raise RegistryError("BLOB_UPLOAD_INVALID", f"malformed Content-Range {text[:80]!r}")
    start, end = parse_decimal(match[1]), parse_decimal(match[2])
    if start != session.offset or end < start:
        raise RegistryError(
            "RANGE_INVALID",
            f"chunk {start}-{end} does not continue the upload at byte {session.offset}",
            status=416,
            headers=session_headers(session),
        )
    length = request.content_length
    if length is not None and length != end - start + 1:
        raise RegistryError(
            "BLOB_UPLOAD_INVALID",
            f"Content-Range {start}-{end} is {end - start + 1} bytes "
            f"but Content-Length is {length}",
        )
    return end - start + 1


async def receive_chunk(request: web.Request, session: UploadSession) -> None:
    """Append the body to the session; a broken chunk ends the session (no partial state).

    A disk error (ENOSPC) ends it too: the temp file may hold part of the chunk,
    and the session's offset could not say where a retry should start.
    """
    said = check_content_range(request, session)
    before = session.offset
    try:
        await receive_body(request, session.open_writer())
        if said is not None and session.offset - before != said:
            raise RegistryError(
                "BLOB_UPLOAD_INVALID",
                f"Content-Range said {said} bytes but the body had {session.offset - before}; "
                "start the upload again",
            )
    except (RegistryError, OSError):
        request.app[UPLOADS].cancel(session)
        raise


def check_still_current(request: web.Request, session: UploadSession) -> None:
    """Called with the session's lock held: a request that waited for the lock may find
    the session finished (another PUT) or cancelled (DELETE, expiry) meanwhile."""
    if not request.app[UPLOADS].is_current(session):
        raise RegistryError(
            "BLOB_UPLOAD_UNKNOWN",
            f"upload {session.id} ended (finished or cancelled) while this request waited; "
            "start the upload again if the blob is still needed",
        )


async def patch_upload(request: web.Request) -> web.Response:
    repo = repo_name(request)
    session = find_session(request, repo)
    async with session.lock:
        check_still_current(request, session)
        await receive_chunk(request, session)
    return web.Response(status=202, headers=session_headers(session))


async def finish_upload(request: web.Request) -> web.Response:
    repo = repo_name(request)
    session = find_session(request, repo)
    digest = parse_digest(request.query.get("digest"))
    app = request.app
    async with session.lock:
        check_still_current(request, session)
        await receive_chunk(request, session)
        app[UPLOADS].finish(session)
        await commit(session.open_writer(), digest)
    await asyncio.to_thread(app[REPOSITORIES].link_blob, repo, digest)
    log.info("blob.pushed repo=%s digest=%s", repo, digest)
    announce_pushed(app, digest)
    return blob_created(repo, digest)


async def upload_status(request: web.Request) -> web.Response:
    session = find_session(request, repo_name(request))
    return web.Response(status=204, headers=session_headers(session))


async def cancel_upload(request: web.Request) -> web.Response:
    """DELETE waits for a PATCH or PUT in progress, so it never closes a file mid-write."""
    session = find_session(request, repo_name(request))
    async with session.lock:
        check_still_current(request, session)
        request.app[UPLOADS].cancel(session)
    return web.Response(status=204, headers=API_HEADERS)


def routes() -> list[web.RouteDef]:
    session = "/v2/{name:.+}/blobs/uploads/{uuid}"
    return [
        web.post("/v2/{name:.+}/blobs/uploads/", start_upload, name="upload_start"),
        web.patch(session, patch_upload, name="upload_patch"),
        web.put(session, finish_upload, name="upload_finish"),
        web.get(session, upload_status, name="upload_status", allow_head=False),
        web.delete(session, cancel_upload, name="upload_cancel"),
    ]
