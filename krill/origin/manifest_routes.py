"""Manifests GET/HEAD/PUT/DELETE by tag or digest, stored byte-exact.

A manifest's bytes go into the content-addressed store (its digest is the
sha256 of exactly those bytes) and are returned unchanged with the media type
they were pushed with: the origin never converts between Docker and OCI
formats. ``Accept`` is honoured by refusing, with a message naming both
types, a client that lists manifest types but neither the stored one nor a
wildcard; otherwise the stored bytes are returned as they are.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from krill import oci
from krill.bodies import BodyTooLarge, read_limited
from krill.digests import Digest
from krill.origin.appkeys import CONFIG, REPOSITORIES, STORE
from krill.origin.errors import manifest_unknown
from krill.origin.manifests import check_and_store_manifest, unlink_manifest
from krill.origin.pullthrough import PULL_THROUGH
from krill.origin.storage_metadata import METADATA
from krill.origin.tagging import delete_tag, move_tag
from krill.registry_errors import RegistryError
from krill.registry_params import API_HEADERS, lookup_reference, parse_reference, repo_name

log = logging.getLogger(__name__)


async def resolve_manifest(app: web.Application, repo: str, reference: Digest | str) -> Digest:
    """The digest ``reference`` names in ``repo`` (fetched upstream first in pull-through mode)."""
    pull = app[PULL_THROUGH]
    if pull is not None:
        return await pull.resolve_manifest(repo, reference)
    if isinstance(reference, Digest):
        if app[REPOSITORIES].manifest_media_type(repo, reference) is None:
            raise manifest_unknown(repo, reference)
        return reference
    digest = app[REPOSITORIES].get_tag(repo, reference)
    if digest is None:
        raise manifest_unknown(repo, reference)
    return digest


def check_accept(request: web.Request, media_type: str) -> None:
    """Refuse only a client that lists manifest types and excludes the stored one."""
    accepted = oci.refused_by_accept(request.headers.getall("Accept", []), media_type)
    if accepted is None:
        return
    raise RegistryError(
        "MANIFEST_UNKNOWN",
        f"the manifest is stored as {media_type} and the origin does not convert it; "
        f"the client accepts only {', '.join(sorted(accepted))}",
        status=404,
    )


async def get_manifest(request: web.Request) -> web.Response:
    repo = repo_name(request)
    reference = lookup_reference(request.match_info["reference"])
    app = request.app
    digest = await resolve_manifest(app, repo, reference)
    media_type = app[REPOSITORIES].manifest_media_type(repo, digest)
    if media_type is None or not app[STORE].has(digest):
        raise manifest_unknown(repo, reference)
    check_accept(request, media_type)
    body = app[STORE].read_bytes(digest)
    headers = {**API_HEADERS, "Docker-Content-Digest": str(digest), "Content-Type": media_type}
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return web.Response(headers=headers)
    return web.Response(body=body, headers=headers)


async def read_manifest_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 SIZE_INVALID once it passes ``limit``."""
    try:
        return await read_limited(request.content, limit, "manifest", request.content_length)
    except BodyTooLarge:
        raise RegistryError(
            "SIZE_INVALID",
            f"manifest is larger than the origin's limit of {limit} bytes",
            status=413,
        ) from None
    except (aiohttp.ClientError, ConnectionError):
        raise RegistryError("MANIFEST_INVALID", "the manifest body ended early") from None


async def put_manifest(request: web.Request) -> web.Response:
    repo = repo_name(request)
    reference = parse_reference(request.match_info["reference"])
    app = request.app
    body = await read_manifest_body(request, app[CONFIG].max_manifest_size)
    try:
        parsed = oci.parse_manifest(body, request.headers.get("Content-Type"))
    except oci.ManifestError as exc:
        raise RegistryError("MANIFEST_INVALID", str(exc)) from None
    digest = Digest.of_bytes(body)
    if isinstance(reference, Digest) and reference != digest:
        raise RegistryError(
            "DIGEST_INVALID", f"manifest bytes hash to {digest}, not to {reference} in the URL"
        )
    missing = await asyncio.to_thread(check_and_store_manifest, app, repo, digest, body, parsed)
    metadata = app.get(METADATA)
    if missing and metadata is not None:  # pushed through another origin on the bucket?
        elsewhere = await metadata.in_bucket(repo, missing)
        store = check_and_store_manifest
        missing = await asyncio.to_thread(store, app, repo, digest, body, parsed, elsewhere)
    if missing:
        raise RegistryError(
            "MANIFEST_BLOB_UNKNOWN",
            f"push these to {repo} before the manifest: {', '.join(missing[:10])}",
            detail={"missing": missing},
        )
    log.info("manifest.pushed repo=%s reference=%s digest=%s", repo, reference, digest)
    if isinstance(reference, str):
        await move_tag(app, repo, reference, digest)
    headers = {
        **API_HEADERS,
        "Location": f"/v2/{repo}/manifests/{digest}",
        "Docker-Content-Digest": str(digest),
    }
    if parsed.subject is not None:  # this origin implements the referrers API
        headers["OCI-Subject"] = str(parsed.subject.digest)
    return web.Response(status=201, headers=headers)


async def delete_manifest(request: web.Request) -> web.Response:
    """By tag: remove the tag. By digest: remove the manifest and the tags pointing to it.

    202 either way (the spec's answer); 404 ``MANIFEST_UNKNOWN`` when there was
    nothing to remove. The blobs stay until ``krill origin gc`` finds them
    unreferenced; a deleted manifest drops out of its subject's referrers at once.
    """
    repo = repo_name(request)
    reference = lookup_reference(request.match_info["reference"])
    app = request.app
    if isinstance(reference, str):
        if await delete_tag(app, repo, reference) is None:
            raise manifest_unknown(repo, reference)
        log.info("manifest.tag_deleted repo=%s tag=%s", repo, reference)
        return web.Response(status=202, headers=API_HEADERS)
    if not await asyncio.to_thread(unlink_manifest, app, repo, reference):
        raise manifest_unknown(repo, reference)
    for tag in app[REPOSITORIES].tags_pointing_to(repo, reference):
        await delete_tag(app, repo, tag)
    log.info("manifest.deleted repo=%s digest=%s", repo, reference)
    return web.Response(status=202, headers=API_HEADERS)


def routes() -> list[web.RouteDef]:
    path = "/v2/{name:.+}/manifests/{reference}"
    return [
        web.get(path, get_manifest, name="manifest"),
        web.put(path, put_manifest, name="manifest_put"),
        web.delete(path, delete_manifest, name="manifest_delete"),
    ]
