"""Storing a manifest: its exact bytes, its link in the repository, its referrers entry.

A manifest arrives by a push (``manifest_routes``) or from the upstream
registry (``pullthrough``); both store it the same way, so this lives below
both of them rather than in the route module.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from krill import oci
from krill.digests import Digest
from krill.origin.appkeys import GC_LOCK, REPOSITORIES, STORE

__all__ = ["missing_references", "referrer_descriptor", "store_manifest", "unlink_manifest"]


def missing_references(
    app: web.Application,
    repo: str,
    parsed: oci.ParsedManifest,
    elsewhere: frozenset[Digest] = frozenset(),
) -> list[str]:
    """Blobs and child manifests the manifest names that ``repo`` does not have.

    ``elsewhere``: blobs ``repo`` links whose bytes are in the origin's bucket but
    not in its local store (pushed through another origin on the same bucket).
    Each digest is looked up and named once, however often the manifest repeats it
    (a manifest of 20,000 copies of one layer cost 20,000 lookups and a 1.5 MB error).
    """
    repos, store = app[REPOSITORIES], app[STORE]
    blobs = dict.fromkeys(d.digest for d in parsed.blob_references())
    missing = [
        str(digest)
        for digest in blobs
        if not (repos.has_blob(repo, digest) and (store.has(digest) or digest in elsewhere))
    ]
    children = dict.fromkeys(m.digest for m in parsed.manifests)
    missing += [
        str(digest) for digest in children if repos.manifest_media_type(repo, digest) is None
    ]
    return missing


def check_and_store_manifest(
    app: web.Application,
    repo: str,
    digest: Digest,
    body: bytes,
    parsed: oci.ParsedManifest,
    elsewhere: frozenset[Digest] = frozenset(),
) -> list[str]:
    """Store the manifest unless ``repo`` lacks what it names; return what it lacks.

    The check and the link happen under the shared ``GC_LOCK``, so a garbage
    collection cannot delete a blob between the two (see ``origin.gclock``).
    Blocking (fsyncs, the lock): run it in a thread.
    """
    with app[GC_LOCK].shared():
        missing = missing_references(app, repo, parsed, elsewhere)
        if not missing:
            store_manifest(app, repo, digest, body, parsed)
        return missing


def unlink_manifest(app: web.Application, repo: str, digest: Digest) -> bool:
    """Remove the manifest from ``repo``, and its referrers entry; False if it was not there.

    The bytes stay in the store until a garbage collection finds nothing else uses them.
    """
    repos = app[REPOSITORIES]
    media_type = repos.manifest_media_type(repo, digest)
    if media_type is None or not repos.unlink_manifest(repo, digest):
        return False
    try:
        parsed = oci.parse_manifest(app[STORE].read_bytes(digest), media_type)
    except (OSError, oci.ManifestError):
        return True
    if parsed.subject is not None:
        repos.unlink_referrer(repo, parsed.subject.digest, digest)
    return True


def store_manifest(
    app: web.Application, repo: str, digest: Digest, body: bytes, parsed: oci.ParsedManifest
) -> None:
    """Bytes, link, and (with a subject) the referrers entry; blocking, run in a thread.

    A push goes through ``check_and_store_manifest``; an upstream fetch comes here
    directly (its blobs are fetched when asked for, so there is nothing to check).
    """
    app[STORE].put_bytes(body, digest)
    app[REPOSITORIES].link_manifest(repo, digest, parsed.media_type)
    if parsed.subject is not None:
        descriptor = referrer_descriptor(digest, len(body), parsed)
        app[REPOSITORIES].link_referrer(repo, parsed.subject.digest, descriptor)


def referrer_descriptor(digest: Digest, size: int, parsed: oci.ParsedManifest) -> dict[str, Any]:
    """The descriptor the referrers API lists for a manifest (distribution spec v1.1).

    ``artifactType`` is the manifest's own, else its config's media type.
    """
    descriptor: dict[str, Any] = {
        "mediaType": parsed.media_type,
        "digest": str(digest),
        "size": size,
    }
    artifact_type = parsed.artifact_type or (parsed.config.media_type if parsed.config else None)
    if artifact_type:
        descriptor["artifactType"] = artifact_type
    if parsed.annotations:
        descriptor["annotations"] = parsed.annotations
    return descriptor
