"""The referrers API (distribution spec v1.1): which manifests name a given manifest as subject.

``GET /v2/<name>/referrers/<digest>[?artifactType=<type>]`` answers an OCI
image index listing the descriptor of every manifest in ``<name>`` whose
``subject`` is ``<digest>`` (signatures, SBOMs, attestations), with each
one's ``artifactType`` and ``annotations``. An unknown subject is an empty
index, not an error. With ``artifactType`` the list is filtered and the
``OCI-Filters-Applied: artifactType`` header says so.

Because this API exists, a manifest PUT with a ``subject`` is answered with
``OCI-Subject``, which tells clients (oras, cosign) not to fall back to the
``sha256-<hex>`` referrers tag schema.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from krill import oci
from krill.origin.appkeys import REPOSITORIES
from krill.registry_params import API_HEADERS, parse_digest, repo_name


async def get_referrers(request: web.Request) -> web.Response:
    repo = repo_name(request)
    subject = parse_digest(request.match_info["digest"])
    descriptors = await asyncio.to_thread(request.app[REPOSITORIES].referrers, repo, subject)
    headers = {**API_HEADERS, "Content-Type": oci.OCI_INDEX}
    artifact_type = request.query.get("artifactType")
    if artifact_type:
        descriptors = [d for d in descriptors if d.get("artifactType") == artifact_type]
        headers["OCI-Filters-Applied"] = "artifactType"
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": descriptors}
    return web.Response(body=json.dumps(index).encode(), headers=headers)


def routes() -> list[web.RouteDef]:
    return [web.get("/v2/{name:.+}/referrers/{digest}", get_referrers, name="referrers")]
