"""``GET /v2/<name>/referrers/<digest>`` on the agent: the origin's referrers, filtered here.

Signature and SBOM tools (notation, cosign, oras) find what refers to an image
through this API. The origin answers ``OCI-Subject`` when such an artifact is
pushed, so those tools never write the fallback ``sha256-<hex>`` tag; an agent
without this route would make every signature invisible to a verifier that
pulls through it. Nothing is cached: a referrers list grows whenever a
signature is pushed, and is asked for rarely.

The agent asks the origin for the whole list and applies ``artifactType``
itself, so its ``OCI-Filters-Applied`` header says exactly what it did,
whichever origin (or upstream registry behind it) answered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from krill import oci
from krill.agent.origins import ask_origin
from krill.digests import Digest
from krill.originclient import Answer, OriginClient
from krill.registry_errors import RegistryError

__all__ = ["MAX_REFERRERS_BYTES", "fetch_referrers", "referrers_response"]

MAX_REFERRERS_BYTES = 4 << 20  # an image index of ~10,000 descriptors


async def fetch_referrers(
    origin: OriginClient,
    repository: str,
    digest: Digest,
    authorization: str | None,
    seconds: float,
) -> Answer:
    """The origin's whole (unfiltered) referrers index for ``digest`` in ``repository``."""
    url = f"{origin.base_url}/v2/{repository}/referrers/{digest}"
    headers = {"Authorization": authorization} if authorization else {}
    too_large = RegistryError("UNAVAILABLE", "the origin's referrers list is too large", status=502)
    return await ask_origin(
        origin, url, what="referrers", limit=MAX_REFERRERS_BYTES, seconds=seconds,
        headers=headers, too_large=too_large,
    )  # fmt: skip


def referrers_response(
    answer: Answer, artifact_type: str | None, headers: Mapping[str, str]
) -> web.Response:
    """The client's index from the origin's 200, keeping only ``artifact_type`` if given."""
    manifests = _descriptors(answer.body)
    extra = dict(headers)
    if artifact_type:
        manifests = [m for m in manifests if m.get("artifactType") == artifact_type]
        extra["OCI-Filters-Applied"] = "artifactType"
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": manifests}
    return web.Response(
        body=json.dumps(index, separators=(",", ":")).encode(),
        content_type=oci.OCI_INDEX,
        headers=extra,
    )


def _descriptors(body: bytes) -> list[dict[str, Any]]:
    """The ``manifests`` of an index body, or 502 if it is not one."""
    try:
        manifests = json.loads(body).get("manifests")
    except (ValueError, AttributeError):
        manifests = None
    if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
        raise RegistryError(
            "UNAVAILABLE", "the origin's referrers answer is not an image index", status=502
        )
    return manifests
