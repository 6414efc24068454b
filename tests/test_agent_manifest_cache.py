"""The agent's manifest cache when its origin stops answering (``agent.manifests``).

A tag seen before is answered stale rather than failed; and while the origin
stays unreachable the stale answer is reused for ``STALE_RETRY`` seconds, not
asked for again on every request, each of which would wait the origin's
timeout out (a review measured 5 s per request through a stopped origin).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from krill.agent.manifests import ManifestCache
from krill.blobstore import BlobStore
from krill.originclient import OriginClient

MANIFEST = json.dumps(
    {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + "0" * 64, "size": 2},
     "layers": []}
).encode()


async def test_a_stale_tag_is_reused_while_the_origin_stays_unreachable(
    tmp_path: Path, aiohttp_server: AiohttpServer
) -> None:
    hung = asyncio.Event()  # set: the origin accepts requests and never answers them
    never = asyncio.Event()
    asked = 0

    async def manifest(request: web.Request) -> web.Response:
        nonlocal asked
        asked += 1
        if hung.is_set():
            await never.wait()
        media_type = "application/vnd.oci.image.manifest.v1+json"
        return web.Response(body=MANIFEST, content_type=media_type)

    app = web.Application()
    app.router.add_get("/v2/{repo:.+}/manifests/{ref}", manifest)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        cache = ManifestCache(
            OriginClient(session, str(server.make_url("")).rstrip("/")),
            BlobStore(tmp_path / "manifests"),
            tag_ttl=0.0,  # every request asks the origin again while it answers
            timeout=0.2,
        )
        fresh = await cache.get("team/app", "v1")
        assert asked == 1
        hung.set()
        stale = await cache.get("team/app", "v1")  # waits 0.2 s, then the cached one
        assert stale.digest == fresh.digest and asked == 2
        again = await cache.get("team/app", "v1")
        assert again.digest == fresh.digest
        assert asked == 2, "a stale answer is reused for a while, not asked for each time"
