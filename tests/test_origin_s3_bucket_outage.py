"""Two origin replicas on one bucket while one cannot reach it (real SeaweedFS).

Each replica reaches the bucket through its own relay, which the test can
cut (new connections refused, open ones closed), as a network partition or
a stopped store looks to that origin. What must hold:

* a replica that cannot read the bucket answers 503 ``UNAVAILABLE`` for a
  blob, manifest or tag list it does not hold locally, never 404: another
  origin may have pushed it there, and clients take a 404 as final;
* that replica stays ready (``degraded``): it still serves what it holds;
* a push whose bucket write failed (503, "push it again") and is then
  retried the way skopeo and docker retry it (a ``HEAD`` finds the blob on
  this origin, so it is not uploaded again, then the manifest) leaves the
  blob pullable from the other replica too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer
from yarl import URL

from krill.origin.config import OriginConfig
from krill.origin.server import create_app
from krill.origin.storage import OBJECT_STORE
from krill.s3backend import S3Location
from tests.components import free_port
from tests.fixtures_origin import error_code
from tests.imagebuild import Image, build_image, random_files
from tests.s3_fixtures import SeaweedFS, s3_location, seaweedfs
from tests.test_origin_s3 import credentials_file, push, push_image, storage_url

__all__ = ["s3_location", "seaweedfs"]  # fixtures used here


class Relay:
    """127.0.0.1:``port`` to the store's port, until ``cut``: then nothing gets through."""

    def __init__(self, upstream: URL) -> None:
        self.upstream_port = upstream.port or 80
        self.port = free_port()
        self.cut_off = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> URL:
        return URL(f"http://127.0.0.1:{self.port}")

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Refuse what comes next and drop what is open (pooled connections too)."""
        self.cut_off = True
        for writer in self._writers:
            writer.close()

    def mend(self) -> None:
        self.cut_off = False

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}
            writer.close()
            up_writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    sink.close()


@dataclasses.dataclass
class Replica:
    client: TestClient
    relay: Relay


@pytest.fixture
async def replicas(
    tmp_path: Path,
    seaweedfs: SeaweedFS,
    s3_location: S3Location,
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
) -> AsyncIterator[tuple[Replica, Replica]]:
    started = []
    for name in ("a", "b"):
        relay = Relay(s3_location.endpoint)
        await relay.start()
        location = dataclasses.replace(s3_location, endpoint=relay.url)
        config = OriginConfig(
            data=tmp_path / name,
            storage=storage_url(location),
            s3_credentials=credentials_file(seaweedfs, tmp_path),
            deltas=False,
        )
        app = create_app(config)
        server: TestServer = await aiohttp_server(app)
        # One quick retry, not the client's 5 s of them (its retries are
        # tests/test_blob_backend_conformance.py's): each request to a cut bucket
        # would otherwise wait them all out.
        app[OBJECT_STORE].backend.client.retry_delays = (0.0,)
        started.append(Replica(await aiohttp_client(server), relay))
    yield started[0], started[1]
    for replica in started:
        await replica.relay.close()


def _image(seed: int) -> Image:
    return build_image([random_files(seed, 1, 4096)])


async def test_a_replica_cut_off_from_the_bucket_answers_503_not_404(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    image = _image(70)
    await push_image(a.client, "team/app", image)
    b.relay.cut()
    layer = image.layers[0].digest
    for path in (
        f"/v2/team/app/blobs/{layer}",
        f"/v2/team/app/manifests/{image.manifest.digest}",
        "/v2/team/app/manifests/v1",
        "/v2/team/app/tags/list",
    ):
        resp = await b.client.get(path)
        assert resp.status == 503, (path, await resp.text())
        assert await error_code(resp) == "UNAVAILABLE"
        assert "could not be read" in await resp.text()
        assert resp.headers["Retry-After"] == "10"
    ready = await b.client.get("/ready")  # still in its Services: it serves what it holds
    body = await ready.json()
    assert ready.status == 200 and body["status"] == "degraded", body
    assert body["checks"]["bucket"]["outcome"] == "fail", body
    b.relay.mend()
    got = await b.client.get(f"/v2/team/app/blobs/{layer}")
    assert got.status == 200 and await got.read() == image.layers[0].data
    missing = await b.client.get("/v2/team/app/manifests/v9")
    assert missing.status == 404  # with the bucket read, unknown is the truth


async def test_a_push_retried_after_a_bucket_failure_reaches_the_other_replica(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    image = _image(71)
    layer = image.layers[0]
    a.relay.cut()
    failed = await push(a.client, "team/app", layer.data)
    assert failed.status == 503 and "push it again" in await failed.text()
    a.relay.mend()
    # The retry, as registry clients make it: the blob is on this origin, so it is
    # not uploaded again; the other blobs and the manifest are.
    assert (await a.client.head(f"/v2/team/app/blobs/{layer.digest}")).status == 200
    await push_image(a.client, "team/app", image, found=frozenset({layer.digest}))
    got = await b.client.get(f"/v2/team/app/blobs/{layer.digest}")
    assert got.status == 200, await got.text()
    assert await got.read() == layer.data
