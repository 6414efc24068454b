"""The agent's pull-only OCI Distribution endpoint (what containerd talks to).

Routes: ``/v2/``, ``/v2/<name>/manifests/<ref>``, ``/v2/<name>/blobs/<digest>``,
``/v2/<name>/tags/list`` and ``/v2/<name>/referrers/<digest>`` (GET and HEAD;
tags and referrers from the origin, ``agent.taglist``, ``agent.referrers``).
``?ns=<upstream host>`` selects the origin repository (see ``agent.namespaces``).
Anything that would write answers 405 ``UNSUPPORTED`` with the origin's
address, because pushes belong there.

Private repositories (docs/security.md): an agent with node credentials
serves a manifest or blob (from its cache, the swarm or a delta) only after
the origin accepted the client's ``Authorization`` for it
(``agent.access``), and sends that header with the manifest fetches it
makes for the client. A refused client gets the origin's 401 challenge with
its realm pointed at ``/auth/token`` here, which forwards to the origin's
(``agent.token_proxy``). An agent without node credentials asks the origin
anonymously and passes its 401 on the same way: it cannot check later
readers, so it serves only what anonymous may read, and while the origin asks
for credentials it checks that, as anonymous, before serving anything from
its cache or the swarm (``agent.anonymous``).
"""

from __future__ import annotations

import logging
import re

from aiohttp import hdrs, web

from krill.agent.access import Access, AccessDecision, RepositoryAccess, agent_realm_challenge
from krill.agent.anonymous import AnonymousReads
from krill.agent.manifests import OriginRefused
from krill.agent.node import AgentNode
from krill.agent.referrers import fetch_referrers, referrers_response
from krill.agent.serving import blob_response
from krill.agent.sources import BlobNotFound, SourceUnavailable
from krill.agent.taglist import fetch_tag_list, tag_list_response
from krill.agent.token_proxy import TOKEN_PATH, forward_token_request
from krill.digests import Digest
from krill.httpmetrics import latency_middleware
from krill.names import InvalidNameError, image_reference
from krill.originclient import OriginClient
from krill.registry_errors import RegistryError, error_middleware
from krill.registry_params import API_HEADERS, lookup_reference, parse_digest
from krill.requestid import install_request_ids

log = logging.getLogger(__name__)

NODE = web.AppKey("node", AgentNode)
# None: no node credentials, nothing private can be on this node, so nothing is checked.
ACCESS: web.AppKey[RepositoryAccess | None] = web.AppKey("access")
# Without node credentials: anonymous decisions, while the origin is not open to all.
ANONYMOUS = web.AppKey("anonymous", AnonymousReads)

_MANIFEST_PATH = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$")
_BLOB_PATH = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)$")
_TAGS_PATH = re.compile(r"^/v2/(?P<name>.+)/tags/list$")
_REFERRERS_PATH = re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)$")


def build_registry_app(node: AgentNode) -> web.Application:
    timed = latency_middleware(node.metrics.request_seconds)
    app = web.Application(middlewares=[timed, error_middleware])
    install_request_ids(app)
    app[NODE] = node
    app[ACCESS] = _repository_access(node)
    app[ANONYMOUS] = AnonymousReads(
        OriginClient(node.session, node.config.origin),
        node.config.data / "origin-access",
        timeout=node.config.origin_timeout,
    )
    app.router.add_route("GET", TOKEN_PATH, handle_token)
    app.router.add_route("POST", TOKEN_PATH, handle_token)
    app.router.add_route("GET", "/v2/", handle_base)
    app.router.add_route("HEAD", "/v2/", handle_base)
    # One route per kind, so request latency is labelled by kind (krill.httpmetrics);
    # the handler is the same and tells the kinds apart itself, and the catch-all
    # answers the rest (writes, unknown paths).
    for pattern in (
        r"/v2/{name:.+}/manifests/{reference:[^/]+}",
        r"/v2/{name:.+}/blobs/{digest:[^/]+}",
        "/v2/{name:.+}/tags/list",
        r"/v2/{name:.+}/referrers/{digest:[^/]+}",
    ):
        app.router.add_route("*", pattern, handle_v2)
    app.router.add_route("*", "/v2/{path:.+}", handle_v2)
    return app


def _repository_access(node: AgentNode) -> RepositoryAccess | None:
    if node.config.origin_credentials is None:
        return None
    origin = OriginClient(node.session, node.config.origin)
    return RepositoryAccess(origin, timeout=node.config.origin_timeout)


async def handle_token(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return await forward_token_request(request, OriginClient(node.session, node.config.origin))


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
    if match := _TAGS_PATH.match(request.path):
        return await _tags(request, node, match["name"])
    if match := _REFERRERS_PATH.match(request.path):
        return await _referrers(request, node, match["name"], match["digest"])
    raise RegistryError(
        "UNSUPPORTED",
        "this agent serves only /v2/<name>/manifests, /v2/<name>/blobs, /v2/<name>/tags/list "
        "and /v2/<name>/referrers",
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
    lookup_reference(reference)  # a bad digest or tag is the client's error, before any asking
    accept = ", ".join(request.headers.getall("Accept", [])) or None
    # A client's credentials go to the origin only from an agent that checks every
    # later reader (node credentials): otherwise a manifest one client's password
    # fetched would be in the cache for the next client without one.
    authorization = None
    access = request.app[ACCESS]
    what = f"manifest {image_reference(repository, reference)}"
    if access is not None:
        authorization = request.headers.get(hdrs.AUTHORIZATION)
        decision = await access.manifest(repository, reference, authorization)
        _require(request, decision, what)
    elif (anonymous := await request.app[ANONYMOUS].manifest(repository, reference)) is not None:
        _require(request, anonymous, what)
    try:
        manifest = await node.manifests.get(repository, reference, accept, authorization)
    except OriginRefused as exc:
        access_status = Access.UNAUTHORIZED if exc.status == 401 else Access.DENIED
        _require(request, AccessDecision(access_status, exc.challenge), f"{repository}:{reference}")
        raise
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
    access = request.app[ACCESS]
    what = f"blob {digest} in {repository}"
    if access is not None:
        decision = await access.blob(
            repository, str(digest), request.headers.get(hdrs.AUTHORIZATION)
        )
        _require(request, decision, what)
    elif (anonymous := await request.app[ANONYMOUS].blob(repository, str(digest))) is not None:
        _require(request, anonymous, what)
    return await serve_blob(request, node, digest, repository)


async def _tags(request: web.Request, node: AgentNode, name: str) -> web.Response:
    """The origin's tag list, with the client's credentials where manifests get them."""
    repository = origin_repository(request, node, name)
    authorization = None
    if request.app[ACCESS] is not None:
        authorization = request.headers.get(hdrs.AUTHORIZATION)
    answer = await fetch_tag_list(  # the manifests' client: it fails over along the replicas
        node.manifests.origin, repository, request.query, authorization,
        node.config.origin_timeout,
    )  # fmt: skip
    what = f"the tags of {repository}"
    if answer.status == 401:
        _require(request, AccessDecision(Access.UNAUTHORIZED, answer.challenge), what)
    if answer.status == 403:
        _require(request, AccessDecision(Access.DENIED, None), what)
    if answer.status == 404:
        raise RegistryError("NAME_UNKNOWN", f"repository {repository} is not on the origin")
    if answer.status == 400:  # the client's mistake (a bad n): the origin's error, as it is
        return web.Response(
            status=400, body=answer.body, content_type="application/json", headers=API_HEADERS
        )
    if answer.status != 200:
        raise RegistryError(
            "UNAVAILABLE", f"the origin answered {answer.status} for {what}", status=502
        )
    return tag_list_response(answer, name, request.query.get("ns"), API_HEADERS)


async def _referrers(
    request: web.Request, node: AgentNode, name: str, digest_text: str
) -> web.Response:
    """The origin's referrers of a manifest (``agent.referrers``), credentials as for tags."""
    repository = origin_repository(request, node, name)
    digest = parse_digest(digest_text)
    authorization = None
    if request.app[ACCESS] is not None:
        authorization = request.headers.get(hdrs.AUTHORIZATION)
    answer = await fetch_referrers(
        node.manifests.origin, repository, digest, authorization, node.config.origin_timeout
    )
    what = f"the referrers of {digest} in {repository}"
    if answer.status == 401:
        _require(request, AccessDecision(Access.UNAUTHORIZED, answer.challenge), what)
    if answer.status == 403:
        _require(request, AccessDecision(Access.DENIED, None), what)
    if answer.status in (400, 404):  # a bad digest, or an origin without the API: as it is
        return web.Response(
            status=answer.status, body=answer.body, content_type="application/json",
            headers=API_HEADERS,
        )  # fmt: skip
    if answer.status != 200:
        raise RegistryError(
            "UNAVAILABLE", f"the origin answered {answer.status} for {what}", status=502
        )
    return referrers_response(answer, request.query.get("artifactType"), API_HEADERS)


def _require(request: web.Request, decision: AccessDecision, what: str) -> None:
    """Raise the registry error for anything but ALLOWED (see the module doc)."""
    if decision.access is Access.ALLOWED:
        return
    if decision.access is Access.UNAUTHORIZED:
        token_url = f"{request.scheme}://{request.host}{TOKEN_PATH}"
        challenge = agent_realm_challenge(decision.challenge, token_url)
        raise RegistryError(
            "UNAUTHORIZED",
            f"the origin needs credentials to read {what}",
            headers={hdrs.WWW_AUTHENTICATE: challenge},
        )
    if decision.access is Access.DENIED:
        raise RegistryError("DENIED", f"the origin does not let these credentials read {what}")
    if decision.access is Access.NOT_FOUND:
        code = "BLOB_UNKNOWN" if what.startswith("blob") else "MANIFEST_UNKNOWN"
        raise RegistryError(code, f"{what} is not on the origin")
    raise RegistryError(
        "UNAVAILABLE",
        f"the origin cannot be asked whether these credentials may read {what}; try the upstream",
    )


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
            f"blob {digest} cannot be fetched now ({str(exc)[:500]}); try the upstream",
        ) from None
    return await blob_response(request, blob, node.cache, node.metrics, node.config.stall_timeout)
