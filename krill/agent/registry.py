"""The agent's pull-only OCI Distribution endpoint (what containerd talks to).

Routes: ``/v2/``, ``/v2/<name>/manifests/<ref>`` and ``/v2/<name>/blobs/<digest>``
(GET and HEAD). ``?ns=<upstream host>`` selects the origin repository (see
``agent.namespaces``). Anything that would write answers 405 ``UNSUPPORTED``
with the origin's address, because pushes belong there.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web

from krill.agent.node import AgentNode
from krill.agent.serving import blob_response
from krill.agent.sources import BlobNotFound, SourceUnavailable
from krill.digests import Digest
from krill.httpmetrics import latency_middleware
from krill.names import InvalidNameError
from krill.registry_errors import RegistryError, error_middleware
from krill.registry_params import API_HEADERS, parse_digest
from krill.requestid import install_request_ids

log = logging.getLogger(__name__)

NODE = web.AppKey("node", AgentNode)

_MANIFEST_PATH = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$")
_BLOB_PATH = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)$")


def build_registry_app(node: AgentNode) -> web.Application:
    timed = latency_middleware(node.metrics.request_seconds)
    app = web.Application(middlewares=[timed, error_middleware])
    install_request_ids(app)
    app[NODE] = node
    app.router.add_route("GET", "/v2/", handle_base)
    app.router.add_route("HEAD", "/v2/", handle_base)
    app.router.add_route("*", "/v2/{path:.+}", handle_v2)
    return app


async def handle_base(request: web.Request) -> web.Response:
    return web.json_response({}, headers=API_HEADERS)


async def handle_v2(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    if request.method not in ("GET", "HEAD"):
        raise _push_refused(node)
    if match := _MANIFEST_PATH.match(request.path):
        return await _manifest(request, node, match["name"], match["reference"])
    if match := _BLOB_PATH.match(request.path):
        return await _blob(request, node, match["name"], match["digest"])
    raise RegistryError(
        "UNSUPPORTED",
        "this agent serves only /v2/<name>/manifests and /v2/<name>/blobs",
        status=404,
    )


def _push_refused(node: AgentNode) -> RegistryError:
    return RegistryError(
        "UNSUPPORTED",
        "the Krill agent is a pull-only mirror; push images to the origin at "
        f"{node.config.origin or '(the origin URL)'}",
        headers={"Allow": "GET, HEAD"},
    )


def origin_repository(request: web.Request, node: AgentNode, name: str) -> str:
    try:
        return node.namespaces.origin_repository(name, request.query.get("ns"))
    except InvalidNameError as exc:
        raise RegistryError("NAME_INVALID", str(exc)) from None


async def _manifest(
    request: web.Request, node: AgentNode, name: str, reference: str
) -> web.Response:
    repository = origin_repository(request, node, name)
    accept = ", ".join(request.headers.getall("Accept", [])) or None
    manifest = await node.manifests.get(repository, reference, accept)
    headers = {
        **API_HEADERS,
        "Docker-Content-Digest": str(manifest.digest),
        "Content-Type": manifest.media_type,
    }
    # aiohttp leaves the body out of HEAD responses but keeps its Content-Length.
    return web.Response(status=200, body=manifest.body, headers=headers)


async def _blob(
    request: web.Request, node: AgentNode, name: str, digest_text: str
) -> web.StreamResponse:
    repository = origin_repository(request, node, name)
    digest = parse_digest(digest_text)
    return await serve_blob(request, node, digest, repository)


async def serve_blob(
    request: web.Request, node: AgentNode, digest: Digest, repository: str | None
) -> web.StreamResponse:
    """GET/HEAD one blob from wherever it is now; 503 when no source can deliver.

    A HEAD for a blob not yet on the node starts fetching it: the size comes from
    the committed source, and the client's GET usually follows at once.
    """
    try:
        blob = await node.fetcher.open(digest, repository)
    except BlobNotFound:
        raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is not on the origin") from None
    except SourceUnavailable as exc:
        log.info("blob.unavailable digest=%s repo=%s error=%s", digest, repository, exc)
        raise RegistryError(
            "UNAVAILABLE",
            f"blob {digest} cannot be fetched now (swarm and origin failed); try the upstream",
        ) from None
    return await blob_response(request, blob, node.cache, node.metrics, node.config.stall_timeout)
