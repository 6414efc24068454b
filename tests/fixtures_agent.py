"""Agent and tracker fixtures shared by the suite (see tests/conftest.py).

* ``http``: an aiohttp client session for the test's own requests.
* ``taken_port``: a port a listening socket holds (for "port in use" errors).
* ``redis_url``: an empty database on a real redis-server. One server runs for
  the whole session (starting one takes a noticeable part of a second) and is
  flushed before each test, so tests never see each other's swarms.

And helpers several agent test modules use:

* ``fake_origin``: a stand-in origin on loopback answering the routes a test
  gives it (misbehaving on purpose, usually);
* the delta path's pieces: a node holding v1's layers that has served v1 and
  v2 (``node_holding``), a real delta between the two
  (``versions_with_a_delta``), metrics that count (``CountingMetrics``), a
  rebuilder asking an origin that offers a given delta (``rebuilder_offering``)
  and one rebuild with it (``rebuild_with``).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestServer

from krill.agent.cache import CacheLimits, NodeCache
from krill.agent.deltachoice import Choice, Decision, DeltaPolicy
from krill.agent.deltas import DeltaMetrics, DeltaRebuilder, EnsureBlob
from krill.agent.layers import LayerIndex
from krill.blobstore import BlobStore
from krill.clock import SYSTEM_CLOCK, Clock
from krill.delta import create_delta
from krill.digests import Digest
from krill.endpoints import DELTAS
from krill.originclient import OriginClient
from tests.components import redis_server
from tests.imagebuild import Image, build_image, random_files, realistic_files

DELTA_REPO = "team/app"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """The shared redis-server's database, emptied for this test."""
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server_url


@contextlib.asynccontextmanager
async def fake_origin(routes: dict[str, Handler]) -> AsyncIterator[str]:
    """A stand-in origin answering GET ``routes`` on loopback; yields its base URL."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


class CountingMetrics:
    """A ``DeltaMetrics`` that keeps what it was told."""

    def __init__(self) -> None:
        self.hits = 0
        self.saved = 0
        self.misses: list[str] = []
        self.failures: list[str] = []
        self.choices: list[Decision] = []
        self.seconds_saved: list[tuple[Choice, float]] = []

    def delta_hit(self, bytes_saved: int) -> None:
        self.hits += 1
        self.saved += bytes_saved

    def delta_miss(self, reason: str) -> None:
        self.misses.append(reason)

    def delta_failure(self, reason: str) -> None:
        self.failures.append(reason)

    def delta_choice(self, decision: Decision) -> None:
        self.choices.append(decision)

    def delta_seconds(self, choice: Choice, saved: float) -> None:
        self.seconds_saved.append((choice, saved))


def learn(index: LayerIndex, image: Image) -> None:
    """The layer index learns ``image`` as served from ``DELTA_REPO``."""
    manifest = image.manifest
    index.learn(DELTA_REPO, Digest.parse(manifest.digest), manifest.data, manifest.media_type)


async def node_holding(
    tmp_path: Path, v1: Image, v2: Image
) -> tuple[BlobStore, NodeCache, LayerIndex]:
    """A node whose cache holds v1's layers and which has served v1 and v2."""
    store = BlobStore(tmp_path / "blobs")
    cache = NodeCache(store, CacheLimits(budget=1 << 30))
    for layer in v1.layers:
        await cache.add(store.put_bytes(layer.data))
    index = LayerIndex()
    learn(index, v1)
    learn(index, v2)
    return store, cache, index


def versions_with_a_delta(tmp_path: Path) -> tuple[Image, Image, bytes]:
    """v1 and v2 (a few files changed in layer 1) and the codec's delta between those layers."""
    app = realistic_files(21, count=20)
    app_v2 = {**app, "etc/release": b"2\n"}
    runtime = random_files(22, 1, 512)
    v1, v2 = build_image([runtime, app]), build_image([runtime, app_v2])
    (tmp_path / "base").write_bytes(v1.layers[1].data)
    (tmp_path / "target").write_bytes(v2.layers[1].data)
    create_delta(tmp_path / "base", tmp_path / "target", tmp_path / "delta")
    return v1, v2, (tmp_path / "delta").read_bytes()


@dataclass(frozen=True)
class Offering:
    """A node holding v1 and a rebuilder whose origin offers a delta for v2's layer 1."""

    rebuilder: DeltaRebuilder
    ensure: EnsureBlob  # puts the delta or v2's config into the cache, as the fetcher would
    target: Digest  # v2's layer 1
    store: BlobStore
    cache: NodeCache


@contextlib.asynccontextmanager
async def rebuilder_offering(
    node: Path,
    v1: Image,
    v2: Image,
    delta: bytes,
    metrics: DeltaMetrics,
    *,
    policy: DeltaPolicy = DeltaPolicy.FEWEST_BYTES,
    routes: dict[str, Handler] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    fetched: list[Digest] | None = None,
) -> AsyncIterator[Offering]:
    """The origin (``fake_origin``, plus ``routes``) offers ``delta`` against v1's layer 1.

    The delta and the config reach the cache as the fetcher would put them there:
    verified against the digests the origin named; ``fetched`` lists each one asked for.
    The default policy takes every delta: most tests are about rebuilding, not the choice.
    """
    target, base = v2.layers[1].digest, v1.layers[1].digest
    offer = {"status": "ok", "target": target, "base": base, "size": len(delta)}
    offer["delta"] = str(Digest.of_bytes(delta))
    store, cache, index = await node_holding(node, v1, v2)
    remote = {Digest.of_bytes(delta): delta, Digest.parse(v2.config.digest): v2.config.data}

    async def ensure(digest: Digest, repository: str) -> int:
        if fetched is not None:
            fetched.append(digest)
        await cache.add(store.put_bytes(remote[digest], digest))
        return len(remote[digest])

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(offer)

    async with (
        fake_origin({DELTAS.route: answer, **(routes or {})}) as origin,
        aiohttp.ClientSession() as session,
    ):
        rebuilder = DeltaRebuilder(
            OriginClient(session, origin),
            cache,
            index,
            metrics,
            lookup_timeout=5.0,
            policy=policy,
            clock=clock,
        )
        yield Offering(rebuilder, ensure, Digest.parse(target), store, cache)


@dataclass(frozen=True)
class Rebuilt:
    ok: bool  # what DeltaRebuilder.rebuild answered
    metrics: CountingMetrics
    store: BlobStore
    cache: NodeCache


async def rebuild_with(tmp_path: Path, v1: Image, v2: Image, delta: bytes) -> Rebuilt:
    """Serve v1 then v2 to a rebuilder holding v1; the origin offers ``delta`` for v2's layer."""
    metrics = CountingMetrics()
    async with rebuilder_offering(tmp_path, v1, v2, delta, metrics) as offered:
        ok = await offered.rebuilder.rebuild(offered.target, DELTA_REPO, offered.ensure)
    return Rebuilt(ok, metrics, offered.store, offered.cache)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process (here: a socket listening on every interface) holds."""
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        yield holder.getsockname()[1]
