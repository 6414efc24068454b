"""The agent's manifest cache (``agent.manifests``): an origin that stops answering,
and a digest asked under a repository that does not hold it.

A tag seen before is answered stale rather than failed; and while the origin
stays unreachable the stale answer is reused for ``STALE_RETRY`` seconds, not
asked for again on every request, each of which would wait the origin's
timeout out (a review measured 5 s per request through a stopped origin).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from krill.agent.manifests import ManifestCache
from krill.blobstore import BlobStore
from krill.originclient import OriginClient
from krill.registry_errors import RegistryError

MANIFEST = json.dumps(
    {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + "0" * 64, "size": 2},
     "layers": []}
).encode()


MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"


async def origin_with(
    aiohttp_server: AiohttpServer, manifest: Callable[[web.Request], Awaitable[web.Response]]
) -> str:
    """A stand-in origin answering manifest GETs with ``manifest``; its base URL."""
    app = web.Application()
    app.router.add_get("/v2/{repo:.+}/manifests/{ref}", manifest)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


def cache_of(
    session: aiohttp.ClientSession, origin: str, store: Path, *, tag_ttl: float, timeout: float
) -> ManifestCache:
    """A manifest cache in ``store`` asking ``origin``."""
    return ManifestCache(
        OriginClient(session, origin), BlobStore(store), tag_ttl=tag_ttl, timeout=timeout
    )


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
        return web.Response(body=MANIFEST, content_type=MEDIA_TYPE)

    origin = await origin_with(aiohttp_server, manifest)
    async with aiohttp.ClientSession() as session:
        # tag_ttl 0: every request asks the origin again while it answers
        cache = cache_of(session, origin, tmp_path / "manifests", tag_ttl=0.0, timeout=0.2)
        fresh = await cache.get("team/app", "v1")
        assert asked == 1
        hung.set()
        stale = await cache.get("team/app", "v1")  # waits 0.2 s, then the cached one
        assert stale.digest == fresh.digest and asked == 2
        again = await cache.get("team/app", "v1")
        assert again.digest == fresh.digest
        assert asked == 2, "a stale answer is reused for a while, not asked for each time"


async def test_a_cached_digest_is_served_only_under_a_repository_the_origin_served_it_in(
    tmp_path: Path, aiohttp_server: AiohttpServer
) -> None:
    """The spec's 404 for a manifest the repository lacks (conformance review, stop 39).

    The origin holds MANIFEST in ``team/app`` only. Once cached, the same digest
    asked under ``other/repo`` goes to the origin, whose 404 is the answer, and
    with the origin gone it is 503, never the cached bytes; under ``team/app``
    it is served from the cache without asking.
    """
    asked: list[str] = []
    down = False

    async def manifest(request: web.Request) -> web.Response:
        asked.append(request.match_info["repo"])
        if down:
            raise web.HTTPServiceUnavailable()
        if request.match_info["repo"] != "team/app":
            raise web.HTTPNotFound()
        return web.Response(body=MANIFEST, content_type=MEDIA_TYPE)

    origin = await origin_with(aiohttp_server, manifest)
    async with aiohttp.ClientSession() as session:
        cache = cache_of(session, origin, tmp_path / "manifests", tag_ttl=60.0, timeout=2.0)
        cached = (await cache.get("team/app", "v1")).digest
        digest = str(cached)
        assert (await cache.get("team/app", digest)).digest == cached
        assert asked == ["team/app"], "a digest cached under its repository needs no origin"
        with pytest.raises(RegistryError) as unknown:
            await cache.get("other/repo", digest)
        assert (unknown.value.code, unknown.value.status) == ("MANIFEST_UNKNOWN", 404)
        down = True
        with pytest.raises(RegistryError) as unavailable:
            await cache.get("other/repo", digest)
        assert unavailable.value.status in (502, 503)
        assert (await cache.get("team/app", digest)).digest == cached, "its own repo: cached"
        restarted = cache_of(session, origin, tmp_path / "manifests", tag_ttl=60.0, timeout=2.0)
        assert (await restarted.get("team/app", digest)).digest == cached, "kept across restarts"


async def test_an_invalid_tag_is_an_unknown_manifest(tmp_path: Path) -> None:
    """``.INVALID_MANIFEST_NAME``: 404 MANIFEST_UNKNOWN (the OCI conformance suite), not 400."""
    async with aiohttp.ClientSession() as session:
        cache = cache_of(session, "http://127.0.0.1:9", tmp_path / "m", tag_ttl=60.0, timeout=2.0)
        with pytest.raises(RegistryError) as error:
            await cache.get("team/app", ".INVALID_MANIFEST_NAME")
        assert (error.value.code, error.value.status) == ("MANIFEST_UNKNOWN", 404)
