"""The origin's "not here" errors, worded once for routes and pull-through alike.

Route handlers and the pull-through mirror both refuse an unknown blob or
manifest; building the ``RegistryError`` here keeps the code, message and
``detail`` the same whichever of them answers, and lets pull-through raise
them without importing a route module.
"""

from __future__ import annotations

from aiohttp import web

from krill.blobstore import BlobStore
from krill.digests import Digest
from krill.registry_errors import RegistryError
from krill.registry_params import parse_digest

__all__ = [
    "blob_gone",
    "blob_not_on_origin",
    "blob_unknown",
    "manifest_unknown",
    "stored_digest",
]


def blob_unknown(digest: Digest) -> RegistryError:
    """A blob the repository does not hold (a ``/v2/<name>/blobs/...`` request)."""
    return RegistryError(
        "BLOB_UNKNOWN",
        f"blob {digest} is not known in this repository",
        detail={"digest": str(digest)},
    )


def manifest_unknown(repo: str, reference: Digest | str) -> RegistryError:
    return RegistryError(
        "MANIFEST_UNKNOWN",
        f"manifest {reference} is not known in repository {repo}",
        detail={"name": repo, "reference": str(reference)},
    )


def blob_not_on_origin(digest: Digest) -> RegistryError:
    """A blob the store does not hold (the ``/krill/v1/`` endpoints, which ask by digest)."""
    return RegistryError("BLOB_UNKNOWN", f"no blob {digest} on this origin")


def blob_gone() -> RegistryError:
    """The blob was deleted between the check and the use of its file."""
    return RegistryError("BLOB_UNKNOWN", "the blob was deleted")


def stored_digest(request: web.Request, store: BlobStore) -> Digest:
    """The route's ``{digest}``, valid and in ``store`` (DIGEST_INVALID, BLOB_UNKNOWN)."""
    digest = parse_digest(request.match_info["digest"])
    if not store.has(digest):
        raise blob_not_on_origin(digest)
    return digest
