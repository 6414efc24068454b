"""Pull-through: a real docker-registry upstream behind a counting, token-protected proxy.

The proxy is the test's window on the upstream: it demands a bearer token
(issued by its own ``/token`` endpoint against basic credentials, as the
distribution token spec describes), counts every request that reaches the
registry, and slows blob bodies down so concurrent misses really overlap.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from krill.digests import Digest
from krill.origin.appkeys import STORE, TAG_HISTORY, TAG_MOVED
from tests.components import SKOPEO_FLAGS, docker_registry, skopeo
from tests.fixtures_origin import StartOrigin
from tests.imagebuild import (
    Image,
    build_image,
    random_files,
    read_oci_layout_digests,
    write_oci_layout,
)

USER, PASSWORD, TOKEN = "puller", "s3cret-pass", "token-for-tests"


def basic_header() -> str:
    return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


class CountingProxy:
    """Forwards /v2/ to the registry once the client shows the token; counts what passes."""

    def __init__(self, upstream: str, *, basic: bool = False, corrupt: bool = False) -> None:
        self.upstream = upstream
        self.basic = basic  # demand basic auth on /v2/ instead of a bearer token
        self.corrupt = corrupt  # flip a byte in every blob body
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.tokens_issued = 0
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self.token)
        app.router.add_route("*", "/v2/{path:.*}", self.forward)
        return app

    async def token(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != basic_header():
            return web.Response(status=401)
        assert request.query["service"] == "krill-test"
        self.tokens_issued += 1
        return web.json_response({"token": TOKEN})

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if self.basic:
            if request.headers.get("Authorization") != basic_header():
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="t"'})
        elif request.headers.get("Authorization") != f"Bearer {TOKEN}":
            realm = f"http://{request.host}/token"
            challenge = f'Bearer realm="{realm}",service="krill-test",scope="repository:x:pull"'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        self.requests[(request.method, request.path)] += 1
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("accept", "range")}
        async with self.session.request(
            request.method, self.upstream + request.path_qs, headers=headers
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for name in ("Content-Type", "Docker-Content-Digest", "Content-Length"):
                if name in upstream.headers:
                    response.headers[name] = upstream.headers[name]
            await response.prepare(request)
            first = True
            async for chunk in upstream.content.iter_chunked(256 * 1024):
                if self.corrupt and "/blobs/" in request.path:
                    chunk = bytes([chunk[0] ^ 1]) + chunk[1:]
                await response.write(chunk)
                if first and "/blobs/" in request.path:
                    first = False
                    # A slow upstream (the scenario): the fetch stays in flight while others arrive.
                    await asyncio.sleep(0.3)
            await response.write_eof()
            return response

    def blob_gets(self, digest: str) -> int:
        return sum(n for (m, p), n in self.requests.items() if m == "GET" and p.endswith(digest))

    def manifest_gets(self, ref: str) -> int:
        return sum(
            n
            for (m, p), n in self.requests.items()
            if m == "GET" and p.endswith(f"manifests/{ref}")
        )


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    with docker_registry(tmp_path / "registry") as url:
        yield url


@contextlib.asynccontextmanager
async def running_proxy(
    registry: str, aiohttp_server: AiohttpServer, **options: bool
) -> AsyncIterator[tuple[CountingProxy, TestServer]]:
    counting = CountingProxy(registry, **options)
    server = await aiohttp_server(counting.app())
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        counting.session = session
        yield counting, server


@pytest.fixture
async def proxy(
    registry: str, aiohttp_server: AiohttpServer
) -> AsyncIterator[tuple[CountingProxy, TestServer]]:
    async with running_proxy(registry, aiohttp_server) as running:
        yield running


async def mirror_of(start_origin: StartOrigin, upstream: TestServer, **settings: Any) -> TestServer:
    """An origin mirroring ``upstream`` with the proxy's basic credentials."""
    return await start_origin(
        upstream=f"http://127.0.0.1:{upstream.port}",
        upstream_username=USER,
        upstream_password=PASSWORD,
        **settings,
    )


async def push_upstream(tmp_path: Path, registry: str, image: Image, ref: str, name: str) -> Path:
    src = write_oci_layout(tmp_path / name, image.manifest, [image], "v1")
    host = registry.removeprefix("http://")
    await asyncio.to_thread(
        skopeo, "copy", *SKOPEO_FLAGS, f"oci:{src}:v1", f"docker://{host}/{ref}"
    )
    return src


@pytest.mark.slow
async def test_image_pulls_through_with_token_auth(
    tmp_path: Path,
    registry: str,
    proxy: tuple[CountingProxy, TestServer],
    start_origin: StartOrigin,
) -> None:
    counting, proxy_server = proxy
    image = build_image([random_files(1, 2, 8 * 1024), random_files(2, 2, 8 * 1024)])
    src = await push_upstream(tmp_path, registry, image, "mirror/app:v1", "src")
    origin = await mirror_of(start_origin, proxy_server)
    out = tmp_path / "out"
    ref = f"docker://127.0.0.1:{origin.port}/mirror/app:v1"
    await asyncio.to_thread(skopeo, "copy", *SKOPEO_FLAGS, ref, f"oci:{out}:v1")
    assert read_oci_layout_digests(out) == read_oci_layout_digests(src)
    assert counting.tokens_issued >= 1
    # a second pull is served from the origin's store: no more blob fetches upstream
    before = sum(counting.blob_gets(b.digest) for b in image.blobs())
    await asyncio.to_thread(skopeo, "copy", *SKOPEO_FLAGS, ref, f"oci:{tmp_path / 'again'}:v1")
    assert sum(counting.blob_gets(b.digest) for b in image.blobs()) == before == 3
    assert counting.manifest_gets("v1") == 1  # the tag is fresh for tag_ttl (default 60 s)


@pytest.mark.slow
async def test_twenty_concurrent_pulls_make_one_upstream_fetch(
    tmp_path: Path,
    registry: str,
    proxy: tuple[CountingProxy, TestServer],
    start_origin: StartOrigin,
) -> None:
    counting, proxy_server = proxy
    image = build_image([random_files(3, count=4, size=256 * 1024)])
    await push_upstream(tmp_path, registry, image, "mirror/big:v1", "src")
    origin = await mirror_of(start_origin, proxy_server)
    layer = image.layers[0]
    url = f"http://127.0.0.1:{origin.port}/v2/mirror/big/blobs/{layer.digest}"

    async def pull(session: aiohttp.ClientSession) -> str:
        async with session.get(url) as resp:
            assert resp.status == 200
            return "sha256:" + hashlib.sha256(await resp.read()).hexdigest()

    async with aiohttp.ClientSession() as session:
        digests = await asyncio.gather(*(pull(session) for _ in range(20)))
    assert digests == [layer.digest] * 20
    assert counting.blob_gets(layer.digest) == 1
    metrics = await get_text(f"http://127.0.0.1:{origin.port}/metrics")
    assert 'krill_origin_upstream_fetches_total{kind="blob"} 1.0' in metrics


@pytest.mark.slow
async def test_tags_are_resolved_again_after_the_ttl(
    tmp_path: Path,
    registry: str,
    proxy: tuple[CountingProxy, TestServer],
    start_origin: StartOrigin,
) -> None:
    counting, proxy_server = proxy
    first = build_image([random_files(4, 1, 1024)])
    second = build_image([random_files(5, 1, 1024)])
    await push_upstream(tmp_path, registry, first, "mirror/svc:latest", "one")
    origin = await mirror_of(start_origin, proxy_server, tag_ttl=0.0)
    moves: list[tuple[Digest | None, Digest]] = []

    async def on_moved(repo: str, tag: str, old: Digest | None, new: Digest) -> None:
        moves.append((old, new))

    origin.app[TAG_MOVED].append(on_moved)
    url = f"http://127.0.0.1:{origin.port}/v2/mirror/svc/manifests/latest"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.headers["Docker-Content-Digest"] == first.manifest.digest
        await push_upstream(tmp_path, registry, second, "mirror/svc:latest", "two")
        async with session.get(url) as resp:
            assert resp.headers["Docker-Content-Digest"] == second.manifest.digest
            assert await resp.read() == second.manifest.data
        missing = f"http://127.0.0.1:{origin.port}/v2/mirror/svc/manifests/nope"
        async with session.get(missing) as resp:
            assert resp.status == 404
            assert (await resp.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    d1, d2 = Digest.parse(first.manifest.digest), Digest.parse(second.manifest.digest)
    assert moves == [(None, d1), (d1, d2)]
    assert origin.app[TAG_HISTORY].previous_manifests("mirror/svc", 3, exclude=d2) == [d1]
    assert counting.manifest_gets("latest") == 2


@pytest.mark.slow
async def test_basic_auth_upstream(
    tmp_path: Path, registry: str, aiohttp_server: AiohttpServer, start_origin: StartOrigin
) -> None:
    image = build_image([random_files(6, 1, 2048)])
    await push_upstream(tmp_path, registry, image, "mirror/basic:v1", "src")
    async with running_proxy(registry, aiohttp_server, basic=True) as (counting, proxy_server):
        origin = await mirror_of(start_origin, proxy_server)
        base = f"http://127.0.0.1:{origin.port}/v2/mirror/basic"
        layer = image.layers[0]
        async with aiohttp.ClientSession() as session:
            async with session.head(f"{base}/manifests/v1") as resp:
                assert resp.headers["Docker-Content-Digest"] == image.manifest.digest
            async with session.head(f"{base}/blobs/{layer.digest}") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Length"] == str(len(layer.data))
            assert not origin.app[STORE].has(Digest.parse(layer.digest))  # HEAD fetches nothing
            async with session.get(f"{base}/manifests/v1") as resp:
                assert await resp.read() == image.manifest.data
            async with session.get(f"{base}/blobs/{layer.digest}") as resp:
                assert await resp.read() == layer.data
            async with session.head(f"{base}/blobs/{'sha256:' + '0' * 64}") as resp:
                assert resp.status == 404
        assert counting.tokens_issued == 0
        assert counting.blob_gets(image.layers[0].digest) == 1


@pytest.mark.slow
async def test_corrupt_upstream_blob_is_never_stored_or_served_whole(
    tmp_path: Path, registry: str, aiohttp_server: AiohttpServer, start_origin: StartOrigin
) -> None:
    image = build_image([random_files(8, count=2, size=512 * 1024)])
    layer = image.layers[0]
    await push_upstream(tmp_path, registry, image, "mirror/bad:v1", "src")
    async with running_proxy(registry, aiohttp_server, corrupt=True) as (_, proxy_server):
        origin = await mirror_of(start_origin, proxy_server)
        url = f"http://127.0.0.1:{origin.port}/v2/mirror/bad/blobs/{layer.digest}"
        async with aiohttp.ClientSession() as session:
            for _ in range(2):  # each try fetches again and is cut short again
                with pytest.raises(aiohttp.ClientPayloadError):
                    async with session.get(url) as resp:
                        await resp.read()
        store = origin.app[STORE]
        assert list(store.digests()) == []
        assert list((store.root / "incoming").iterdir()) == []


async def get_text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.text()
