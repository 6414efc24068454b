"""Metainfo on several origins: the blob's owner seeds it, the others send the request there.

A node asks an origin for a blob's metainfo right before it joins the swarm,
and that request is what makes an origin seed the blob
(``origin.seeding``). With replicas (``origin.storage_replicas``), a replica
that does not own the blob asks the owner for the metainfo (the owner then
seeds it) and answers with the owner's bytes, which are the same on every
replica (the torrent is deterministic); only if the owner, and every replica
ranked above this one, fail to answer does it answer and seed itself. So a
herd spread over several origins by a load balancer finds one seeding origin
per blob, and when that one dies the next in the ranking takes over at the
next metainfo request.

The replica that answers from its own store, on an origin on a bucket, first
copies the blob in from the bucket if its local cache lacks it (the owner
caches what it seeds; ``origin.storage_fill``).
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from krill.digests import Digest
from krill.endpoints import METAINFO
from krill.metainfo import METAINFO_CONTENT_TYPE
from krill.origin.appkeys import STORE
from krill.origin.storage import OBJECT_STORE
from krill.origin.storage_replicas import REPLICAS

__all__ = ["FORWARDED_HEADER", "fill_for_seeding", "metainfo_from_owner"]

log = logging.getLogger(__name__)

# Set on a metainfo request one replica sends another: never sent on again (two
# replicas with different views of who is live would otherwise pass it back and forth).
FORWARDED_HEADER = "Krill-Forwarded-By"


async def metainfo_from_owner(request: web.Request, digest: Digest) -> web.Response | None:
    """The owner's answer when another replica owns the blob; None: answer here."""
    replicas = request.app.get(REPLICAS)
    if replicas is None or FORWARDED_HEADER in request.headers or replicas.session is None:
        return None
    headers = {FORWARDED_HEADER: replicas.me}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    for replica in replicas.ranking(digest):
        if replica == replicas.me:
            return None
        try:
            async with replicas.session.get(METAINFO.url(replica, digest), headers=headers) as resp:
                if resp.status == 200:
                    body = await resp.read()
                    log.debug("origin.metainfo_from_owner digest=%s owner=%s", digest, replica)
                    return web.Response(body=body, content_type=METAINFO_CONTENT_TYPE)
                log.info(
                    "origin.owner_refused_metainfo digest=%s owner=%s status=%d",
                    digest,
                    replica,
                    resp.status,
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("origin.owner_unreachable owner=%s error=%s", replica, exc)
    return None


async def fill_for_seeding(app: web.Application, digest: Digest) -> None:
    """Copy the blob in from the bucket if the local cache lacks it (no-op otherwise)."""
    object_store = app.get(OBJECT_STORE)
    if object_store is not None and not app[STORE].has(digest):
        await object_store.fill(app, digest)
