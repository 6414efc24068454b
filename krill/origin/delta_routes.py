"""``GET /krill/v1/deltas/<target>``, and wiring the delta engine into an origin app.

A node about to pull a changed layer asks which delta it can use instead::

    GET /krill/v1/deltas/<target>?have=<digest>,...[&repo=<name>]

and gets the smallest kept delta from a base it listed, or ``{"status":
"none", "queued": N}`` at once (``DeltaEngine.lookup``). At most
``MAX_HAVE`` bases are read; a bad digest or name is the spec's 400.

``setup(app, settings, prefetch)``, from ``create_app`` when deltas are on, adds the
engine (``deltas.DELTA_ENGINE``), its ``TAG_MOVED`` hook, this route, and
the engine's process pool for the app's lifetime.
"""

from __future__ import annotations

from aiohttp import web

from krill.endpoints import DELTAS
from krill.origin.appkeys import TAG_MOVED
from krill.origin.deltas import DELTA_ENGINE, DeltaEngine, DeltaSettings, Prefetch
from krill.registry_params import parse_digest, parse_name

__all__ = ["MAX_HAVE", "get_delta", "setup"]

MAX_HAVE = 64


async def get_delta(request: web.Request) -> web.Response:
    """The smallest delta to the target from a base the node has (``?have=a,b[&repo=name]``)."""
    target = parse_digest(request.match_info["digest"], what="target digest")
    have_text = request.query.get("have", "")
    haves = [h for h in have_text.split(",") if h][:MAX_HAVE]
    have = [parse_digest(h, what="have digest") for h in haves]
    repo = _repo_param(request.query.get("repo"))
    return web.json_response(request.app[DELTA_ENGINE].lookup(target, have, repo))


def _repo_param(text: str | None) -> str | None:
    return parse_name(text) if text else None


def setup(
    app: web.Application, settings: DeltaSettings | None = None, prefetch: Prefetch | None = None
) -> DeltaEngine:
    """Hook the engine into an origin app (TAG_MOVED hook, route, pool lifecycle).

    ``prefetch``: a pull-through mirror's, so a tag that moved upstream has its
    new layers fetched and paired before any node asks (``deltas.Prefetch``).
    """
    engine = DeltaEngine(app, settings or DeltaSettings(), prefetch)
    app[DELTA_ENGINE] = engine
    app[TAG_MOVED].append(engine.on_tag_moved)
    app.router.add_get(DELTAS.route, get_delta, name="delta_lookup")
    app.cleanup_ctx.append(lambda _app: engine.run())
    return engine
