"""Krill's own HTTP endpoints beside the registry API, named once for servers and clients.

Every route an origin or tracker registers under ``/krill/v1/`` and every URL
a node, tracker or tool builds for one comes from here, so the two sides
cannot disagree about a path. Each ``Endpoint`` is an aiohttp route template
(``route``, for ``app.router.add_*``) and builds the URL a client asks
(``url(base, digest)``).
"""

from __future__ import annotations

from dataclasses import dataclass

from krill.digests import Digest

__all__ = ["BLOBS", "BLOB_SOURCE_HEADER", "CLAIMS", "DELTAS", "METAINFO", "Endpoint"]

# On a blob the origin streams while its pull-through mirror fetches it from the
# upstream registry, ``Krill-Blob-Source: upstream``: the agent times such a pull
# under source "upstream" rather than "origin" (a cold mirror is a different wait).
BLOB_SOURCE_HEADER = "Krill-Blob-Source"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ``/krill/v1/<kind>/<digest>`` endpoint."""

    kind: str

    @property
    def prefix(self) -> str:
        return f"/krill/v1/{self.kind}/"

    @property
    def route(self) -> str:
        """The aiohttp route template; the handler reads ``match_info["digest"]``."""
        return self.prefix + "{digest}"

    def url(self, base_url: str, digest: Digest | str) -> str:
        """The absolute URL of this endpoint for ``digest`` on the server at ``base_url``."""
        return base_url.rstrip("/") + self.prefix + str(digest)


# The blob's deterministic torrent (origin; the tracker answers it from its cache).
METAINFO = Endpoint("metainfo")
# The smallest delta to a layer from bases the node has (origin; ?have=...&repo=...).
DELTAS = Endpoint("deltas")
# The next run of a blob's pieces nobody has been handed yet (origin, POST).
CLAIMS = Endpoint("claims")
# A blob's bytes by Range for the pieces a node claimed (origin).
BLOBS = Endpoint("blobs")
