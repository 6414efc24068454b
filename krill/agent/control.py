"""The agent's control API (``--listen``): health, readiness, blobs by digest, preheat, metrics."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from krill import oci
from krill.agent.node import AgentNode
from krill.agent.preheat import InvalidImageName, PreheatError, preheat
from krill.agent.readiness import agent_checks
from krill.agent.registry import NODE, serve_blob
from krill.agent.sources import SourceUnavailable
from krill.httpmetrics import latency_middleware
from krill.readiness import ready_handler
from krill.registry_errors import RegistryError, error_middleware
from krill.registry_params import parse_digest, parse_name
from krill.requestid import install_request_ids

log = logging.getLogger(__name__)


def build_control_app(node: AgentNode) -> web.Application:
    timed = latency_middleware(node.metrics.request_seconds)
    app = web.Application(middlewares=[timed, error_middleware])
    install_request_ids(app)
    app[NODE] = node
    app.router.add_get("/health", handle_health)
    app.router.add_get("/ready", ready_handler(lambda app: agent_checks(app[NODE])))
    app.router.add_route("GET", "/blobs/{digest}", handle_blob)
    app.router.add_route("HEAD", "/blobs/{digest}", handle_blob)
    app.router.add_post("/preheat", handle_preheat)
    app.router.add_get("/metrics", handle_metrics)
    return app


async def handle_health(request: web.Request) -> web.Response:
    node = request.app[NODE]
    reachability = node.peer_reachability()
    return web.json_response(
        {
            "status": "ok",
            "swarm": node.swarm is not None,
            "peer_port": node.swarm.peer_port if node.swarm is not None else None,
            "cache_bytes": node.cache.usage,
            "peer_reachability": reachability.as_dict() if reachability is not None else None,
        }
    )


async def handle_blob(request: web.Request) -> web.StreamResponse:
    """``GET /blobs/<digest>[?repo=NAME]``: the repo lets the HTTP fallback ask the origin."""
    node = request.app[NODE]
    digest = parse_digest(request.match_info["digest"])
    repository = request.query.get("repo")
    if repository is not None:
        parse_name(repository)
    return await serve_blob(request, node, digest, repository)


async def handle_preheat(request: web.Request) -> web.StreamResponse:
    """Body ``{"image": REF, "all_platforms": bool}``; answers NDJSON progress events."""
    node = request.app[NODE]
    try:
        body = await request.json()
        image = str(body["image"])
        all_platforms = bool(body.get("all_platforms", False))
    except (ValueError, KeyError, TypeError, RecursionError):
        # RecursionError: json's decoder recurses per nesting level, so a body of
        # thousands of "[" is hostile input, not a server fault.
        raise RegistryError(
            "UNSUPPORTED", 'POST /preheat needs a JSON body {"image": "name:tag"}', status=400
        ) from None
    events = preheat(node, image, all_platforms)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    try:
        first = await anext(events)
    except (PreheatError, oci.ManifestError) as exc:
        code = "NAME_INVALID" if isinstance(exc, InvalidImageName) else "UNSUPPORTED"
        raise RegistryError(code, str(exc), status=400) from None
    await response.prepare(request)
    await _send(response, first)
    try:
        async for event in events:
            await _send(response, event)
    except (PreheatError, SourceUnavailable, RegistryError, oci.ManifestError) as exc:
        log.warning("preheat.failed image=%s error=%s", image, exc)
        await _send(response, {"event": "error", "message": str(exc)})
    await response.write_eof()
    return response


async def _send(response: web.StreamResponse, event: dict[str, object]) -> None:
    await response.write(json.dumps(event).encode() + b"\n")


async def handle_metrics(request: web.Request) -> web.Response:
    node = request.app[NODE]
    await node.refresh_metrics()
    return web.Response(body=node.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
