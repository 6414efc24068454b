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
from krill.origin.appkeys import REPOSITORIES, STORE

__all__ = ["referrer_descriptor", "store_manifest"]


def store_manifest(
    app: web.Application, repo: str, digest: Digest, body: bytes, parsed: oci.ParsedManifest
) -> None:
    """Bytes, link, and (with a subject) the referrers entry; blocking, run in a thread."""
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
