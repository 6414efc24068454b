"""An origin whose storage is a bucket (real SeaweedFS): write-through, read-through, errors.

In process: pushes answered 201 are in the bucket; a refused digest leaves
nothing there; a linked blob missing from the local store is filled from the
bucket and served with its Range; a bucket gone after start makes pushes 503.
As processes: ``krill origin --storage s3://...`` refuses to start on a
missing bucket, saying to create it; skopeo pushes an image to it, every blob
and manifest is in the bucket, and after the local layer files are removed it
pulls the image back identical (from the bucket, through the local cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from krill.clock import SYSTEM_CLOCK, Clock
from krill.config import ConfigError
from krill.digests import Digest
from krill.origin.appkeys import METRICS, STORE
from krill.origin.config import OriginConfig
from krill.origin.gc import CLOCK_SLACK
from krill.origin.server import create_app
from krill.origin.storage import CACHE_CHECK_INTERVAL, OBJECT_STORE
from krill.origin.storage_gc import sweep_bucket
from krill.s3backend import S3Backend, S3Location
from tests.agent_cluster import Agent, agent_process, build_layout, origin_process, tracker_process
from tests.agent_cluster import push as push_layout
from tests.clocks import ManualClock
from tests.components import SKOPEO_FLAGS, free_port, krill_command, skopeo
from tests.fixtures_origin import digest_of, error_code
from tests.imagebuild import (
    Image,
    build_image,
    random_files,
    read_oci_layout_digests,
    write_oci_layout,
)
from tests.metrics_text import parse_metrics
from tests.polling import until, until_sync
from tests.s3_fixtures import SeaweedFS, s3_location, seaweedfs

__all__ = ["s3_location", "seaweedfs"]  # fixtures used here


@dataclass
class S3Origin:
    client: TestClient
    app: web.Application


class StartS3Origin(Protocol):
    async def __call__(
        self, location: S3Location, *, clock: Clock = SYSTEM_CLOCK, **settings: Any
    ) -> S3Origin: ...


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def credentials_file(store: SeaweedFS, where: Path) -> Path:
    """An AWS shared credentials file for the store's identity."""
    path = where / "aws-credentials"
    path.write_text(
        "[default]\n"
        f"aws_access_key_id = {store.credentials.access_key}\n"
        f"aws_secret_access_key = {store.credentials.secret_key}\n"
    )
    return path


def storage_url(location: S3Location) -> str:
    return f"s3://{location.bucket}/{location.prefix}?endpoint={location.endpoint}"


@pytest.fixture
async def bucket(seaweedfs: SeaweedFS, s3_location: S3Location) -> AsyncIterator[S3Backend]:
    """The test's prefix of the bucket, to look at what the origin put there."""
    backend = S3Backend(s3_location, seaweedfs.credentials)
    yield backend
    await backend.close()


@pytest.fixture
def start_s3_origin(
    tmp_path: Path,
    seaweedfs: SeaweedFS,
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
) -> StartS3Origin:
    async def start(
        location: S3Location, *, clock: Clock = SYSTEM_CLOCK, **settings: Any
    ) -> S3Origin:
        config = OriginConfig(
            data=tmp_path / "origin",
            storage=storage_url(location),
            s3_credentials=credentials_file(seaweedfs, tmp_path),
            deltas=False,
            **settings,
        )
        app = create_app(config, clock=clock)  # storage = s3://: write- and read-through
        server: TestServer = await aiohttp_server(app)
        return S3Origin(await aiohttp_client(server), app)

    return start


async def push(
    client: TestClient,
    repo: str,
    data: bytes,
    digest: str | None = None,
) -> aiohttp.ClientResponse:
    return await client.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": digest or digest_of(data)}, data=data
    )


async def test_pushed_blobs_are_in_the_bucket(
    start_s3_origin: StartS3Origin, s3_location: S3Location, bucket: S3Backend
) -> None:
    origin = await start_s3_origin(s3_location)
    client = origin.client
    small = b"config bytes"
    assert (await push(client, "team/app", small)).status == 201
    big = payload(3, 6 << 20)  # more than one S3 part
    resp = await client.post("/v2/team/app/blobs/uploads/")
    location = resp.headers["Location"]
    half = len(big) // 2
    assert (await client.patch(location, data=big[:half])).status == 202
    resp = await client.put(location, params={"digest": digest_of(big)}, data=big[half:])
    assert resp.status == 201
    for data in (small, big):
        async with bucket.open(Digest.parse(digest_of(data))) as reader:
            assert b"".join([c async for c in reader.chunks]) == data


async def test_refused_digest_leaves_the_bucket_empty(
    start_s3_origin: StartS3Origin, s3_location: S3Location, bucket: S3Backend
) -> None:
    origin = await start_s3_origin(s3_location)
    client = origin.client
    resp = await push(client, "team/app", b"these bytes", digest_of(b"other bytes"))
    assert resp.status == 400 and await error_code(resp) == "DIGEST_INVALID"
    assert [info async for info in bucket.list()] == []


async def test_blob_missing_locally_is_streamed_from_the_bucket_and_filled(
    start_s3_origin: StartS3Origin, s3_location: S3Location
) -> None:
    origin = await start_s3_origin(s3_location)
    client = origin.client
    data = payload(4, 300_000)
    assert (await push(client, "team/app", data)).status == 201
    digest = Digest.parse(digest_of(data))
    url = f"/v2/team/app/blobs/{digest}"
    store = origin.app[STORE]
    assert store.delete(digest)
    ranged = client.get(url, headers={"Range": "bytes=1000-1999"})
    whole = client.get(url)
    first, second = await asyncio.gather(ranged, whole)
    assert first.status == 206 and await first.read() == data[1000:2000]
    assert first.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert second.status == 200 and await second.read() == data
    assert second.headers["Docker-Content-Digest"] == str(digest)
    filling = origin.app[OBJECT_STORE].filling
    await until(
        lambda: store.has(digest) and not filling(digest), "the background copy into the store"
    )
    assert store.path(digest).read_bytes() == data

    assert store.delete(digest)  # the first request after this one is answered from the bucket
    past_end = await client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert past_end.status == 416 and await error_code(past_end) == "RANGE_INVALID"
    assert past_end.headers["Content-Range"] == f"bytes */{len(data)}"
    await until(
        lambda: store.has(digest) and not filling(digest), "the copy the refused request started"
    )
    assert store.delete(digest)
    head = await client.head(url)
    assert head.status == 200 and head.headers["Content-Length"] == str(len(data))


async def test_cold_get_reads_the_bucket_once_and_fills_the_cache(
    start_s3_origin: StartS3Origin, s3_location: S3Location
) -> None:
    origin = await start_s3_origin(s3_location)
    data = payload(5, 3 << 20)  # several chunks of the tap
    assert (await push(origin.client, "team/app", data)).status == 201
    digest = Digest.parse(digest_of(data))
    store = origin.app[STORE]
    assert store.delete(digest)
    backend = origin.app[OBJECT_STORE].backend
    reads: list[tuple[int, int | None]] = []
    real_open = backend.open

    def counting_open(d: Digest, start: int = 0, length: int | None = None) -> Any:
        reads.append((start, length))
        return real_open(d, start, length)

    backend.open = counting_open  # type: ignore[method-assign]
    resp = await origin.client.get(f"/v2/team/app/blobs/{digest}")
    assert resp.status == 200 and await resp.read() == data
    assert reads == [(0, None)]  # one read of the object, shared by the client and the copy
    await until(lambda: store.has(digest), "the copy's commit (after the digest matched)")
    assert store.path(digest).read_bytes() == data


async def test_cold_get_of_a_damaged_object_is_cut_short_and_not_cached(
    start_s3_origin: StartS3Origin, s3_location: S3Location, bucket: S3Backend
) -> None:
    origin = await start_s3_origin(s3_location)
    data = payload(6, 2 << 20)
    assert (await push(origin.client, "team/app", data)).status == 201
    digest = Digest.parse(digest_of(data))
    store = origin.app[STORE]
    assert store.delete(digest)
    damaged = bytearray(data)
    damaged[-1] ^= 0xFF  # same size: only the digest tells
    async with await bucket.client.send("PUT", s3_location.blob_key(digest), body=bytes(damaged)):
        pass
    resp = await origin.client.get(f"/v2/team/app/blobs/{digest}")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()  # stopped short of the declared length: never a whole wrong body
    assert not store.has(digest)
    assert not any(store.root.joinpath("incoming").iterdir())


async def test_bucket_gone_after_start_makes_pushes_unavailable(
    start_s3_origin: StartS3Origin, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    location = S3Location(seaweedfs.endpoint, f"doomed-{free_port()}", "", seaweedfs.region)
    admin = S3Backend(location, seaweedfs.credentials)
    try:
        await admin.client.create_bucket()
        client = (await start_s3_origin(location)).client
        async with await admin.client.send("DELETE", ok=(204, 200)):
            pass
        resp = await push(client, "team/app", b"layer")
        assert resp.status == 503 and await error_code(resp) == "UNAVAILABLE"
        assert "push it again" in (await resp.json())["errors"][0]["message"]
    finally:
        await admin.close()


async def push_image(
    client: TestClient, repo: str, image: Image, *, found: frozenset[str] = frozenset()
) -> None:
    """Push the image's blobs, then its manifest as ``v1``; the blobs whose digests are
    in ``found`` are left out, as a client leaves out those a ``HEAD`` found."""
    for blob in image.blobs():
        if blob.digest not in found:
            assert (await push(client, repo, blob.data)).status == 201
    resp = await client.put(
        f"/v2/{repo}/manifests/v1",
        data=image.manifest.data,
        headers={"Content-Type": image.manifest.media_type},
    )
    assert resp.status == 201, await resp.text()


async def bucket_digests(bucket: S3Backend) -> set[str]:
    return {str(info.digest) async for info in bucket.list()}


async def run_gc(
    seaweedfs: SeaweedFS, location: S3Location, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """``krill origin gc --grace 0`` of the test origin's data and bucket, as a process."""
    config = tmp_path / "gc.toml"
    config.write_text(f's3_credentials = "{credentials_file(seaweedfs, tmp_path)}"\n')
    args = ["origin", "gc", "--config", str(config), "--data", str(tmp_path / "origin")]
    args += ["--storage", storage_url(location), "--grace", "0"]
    done = await asyncio.to_thread(
        subprocess.run, krill_command(*args), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done


async def test_gc_removes_from_the_bucket_what_no_repository_links(
    start_s3_origin: StartS3Origin,
    seaweedfs: SeaweedFS,
    s3_location: S3Location,
    bucket: S3Backend,
    tmp_path: Path,
) -> None:
    """Issue 17's check, on the bucket: a manifest deleted by digest and `krill origin gc
    --grace 0` take its own layers, config and manifest out of the bucket; a layer shared
    with a kept image stays; so does everything of the kept image. A blob unlinked by
    DELETE from its only repository goes too."""
    client = (await start_s3_origin(s3_location)).client
    shared = random_files(7, 2, 4096)
    kept = build_image([shared, random_files(11, 1, 4096)])
    deleted = build_image([shared, random_files(12, 1, 4096)])
    await push_image(client, "team/kept", kept)
    await push_image(client, "team/gone", deleted)
    resp = await client.delete(f"/v2/team/gone/manifests/{deleted.manifest.digest}")
    assert resp.status == 202
    orphan = payload(8, 5000)
    assert (await push(client, "team/kept", orphan)).status == 201
    assert (await client.delete(f"/v2/team/kept/blobs/{digest_of(orphan)}")).status == 202
    everything = {b.digest for img in (kept, deleted) for b in (*img.blobs(), img.manifest)}
    assert await bucket_digests(bucket) == everything | {digest_of(orphan)}

    done = await run_gc(seaweedfs, s3_location, tmp_path)
    gone = {deleted.config.digest, deleted.layers[1].digest, deleted.manifest.digest}
    gone_bytes = sum(len(b.data) for b in (deleted.config, deleted.layers[1], deleted.manifest))
    assert f"bucket: removed 4 objects, {gone_bytes + len(orphan)} bytes" in done.stdout
    assert await bucket_digests(bucket) == everything - gone
    assert kept.layers[0].digest == deleted.layers[0].digest  # the shared layer stayed


async def until_older_than_grace(bucket: S3Backend, digest: Digest) -> None:
    """Until the bucket's time for the blob is past ``--grace 0`` and the collection's
    slack: a sweep starting within the slack of the write rightly keeps the blob."""
    info = await bucket.stat(digest)
    assert info is not None
    await until(lambda: time.time() - CLOCK_SLACK > info.modified, "the blob past the grace")


async def test_periodic_bucket_sweep(
    start_s3_origin: StartS3Origin, s3_location: S3Location, bucket: S3Backend
) -> None:
    clock = ManualClock()
    origin = await start_s3_origin(s3_location, clock=clock, gc_interval=600.0, gc_grace=0.0)
    kept = build_image([random_files(9, 1, 1000)])
    await push_image(origin.client, "team/app", kept)
    dropped = payload(10, 1000)
    assert (await push(origin.client, "team/app", dropped)).status == 201
    resp = await origin.client.delete(f"/v2/team/app/blobs/{digest_of(dropped)}")
    assert resp.status == 202
    await until_older_than_grace(bucket, Digest.parse(digest_of(dropped)))
    both = 2  # the local collection and the bucket sweep, each timed on the clock
    await until(lambda: clock.sleepers == both, "both collections asleep on the clock")
    clock.advance(600.0)
    await until(lambda: clock.sleepers == both, "both collections done and asleep again")
    assert await bucket_digests(bucket) == {b.digest for b in (*kept.blobs(), kept.manifest)}
    counted = parse_metrics(origin.app[METRICS].render().decode())
    assert counted['krill_origin_gc_freed_objects_total{kind="bucket"}'] == 1.0
    assert counted['krill_origin_gc_freed_bytes_total{kind="bucket"}'] == len(dropped)


async def test_local_cache_is_kept_under_its_limit(
    start_s3_origin: StartS3Origin, s3_location: S3Location
) -> None:
    """Past local_cache_max_bytes the least recently used local copies go (never a manifest,
    nor a blob served within seed_ttl); a removed blob is still served, and copied back."""
    clock = ManualClock()
    origin = await start_s3_origin(
        s3_location, clock=clock, local_cache_max_bytes=150_000, seed_ttl=600.0
    )
    client, store = origin.client, origin.app[STORE]
    oldest, older, served = payload(20, 100_000), payload(21, 100_000), payload(22, 100_000)
    for data in (oldest, older, served):
        assert (await push(client, "team/app", data)).status == 201
    image = build_image([random_files(23, 1, 2048)])
    await push_image(client, "team/app", image)
    for age, data in ((2000, oldest), (1000, older)):  # committed long ago
        when = time.time() - age
        os.utime(store.path(Digest.parse(digest_of(data))), (when, when))
    assert (await client.get(f"/v2/team/app/blobs/{digest_of(served)}")).status == 200

    await until(lambda: clock.sleepers > 0, "the cache check asleep on the clock")
    clock.advance(CACHE_CHECK_INTERVAL)
    await until(lambda: clock.sleepers > 0, "the cache check done and asleep again")

    def local(data: bytes) -> bool:
        return store.has(Digest.parse(digest_of(data)))

    assert not local(oldest) and not local(older)
    assert local(served) and store.has(Digest.parse(image.manifest.digest))
    resp = await client.get(f"/v2/team/app/blobs/{digest_of(oldest)}")
    assert resp.status == 200 and await resp.read() == oldest
    await until(lambda: local(oldest), "the evicted blob copied back")


async def test_sweep_refuses_a_data_directory_without_repositories(
    bucket: S3Backend, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="would remove every object"):
        await sweep_bucket(bucket, tmp_path / "fresh", 0.0)


def test_origin_refuses_to_start_on_a_missing_bucket(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    config = tmp_path / "origin.toml"
    config.write_text(f's3_credentials = "{credentials_file(seaweedfs, tmp_path)}"\n')
    missing = S3Location(seaweedfs.endpoint, "never-made", "p", seaweedfs.region)
    args = [
        "origin",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--data",
        str(tmp_path / "data"),
        "--storage",
        storage_url(missing),
    ]
    done = subprocess.run(krill_command(*args), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "bucket 'never-made' does not exist" in done.stderr and "create it" in done.stderr


@pytest.mark.slow
async def test_skopeo_round_trip_through_a_bucket(
    seaweedfs: SeaweedFS, s3_location: S3Location, bucket: S3Backend, tmp_path: Path
) -> None:
    image = build_image([random_files(5, 3, 64 << 10), random_files(6, 2, 3 << 20)])
    src = write_oci_layout(tmp_path / "src", image.manifest, [image], "v1")
    config = tmp_path / "origin.toml"
    config.write_text(f's3_credentials = "{credentials_file(seaweedfs, tmp_path)}"\n')
    root = tmp_path / "origin"
    with origin_process(
        root, "--config", str(config), "--storage", storage_url(s3_location)
    ) as url:
        dest = f"docker://{url.removeprefix('http://')}/team/app:v1"
        await asyncio.to_thread(skopeo, "copy", *SKOPEO_FLAGS, f"oci:{src}:v1", dest)
        in_bucket = {str(info.digest) async for info in bucket.list()}
        assert read_oci_layout_digests(src) <= in_bucket  # layers, config and manifest
        for layer in image.layers:  # the local cache loses the layers; the bucket has them
            (root / "data/blobs/sha256" / layer.digest[7:9] / layer.digest[7:]).unlink()
        out = tmp_path / "out"
        await asyncio.to_thread(skopeo, "copy", *SKOPEO_FLAGS, dest, f"oci:{out}:v1")
    assert read_oci_layout_digests(out) == read_oci_layout_digests(src)


@pytest.mark.slow
def test_agents_pull_through_the_swarm_from_an_origin_on_a_bucket(
    seaweedfs: SeaweedFS, s3_location: S3Location, tmp_path: Path
) -> None:
    """Seeding reads the origin's local files: two agents pull an image pushed to an
    S3-backed origin through the swarm. Then, with those agents gone and the origin's local
    layer copies removed, a third agent still pulls it identical: the origin has no file to
    seed, so the agent falls back to HTTP, answered from the bucket (and copied back)."""
    config = tmp_path / "origin.toml"
    config.write_text(f's3_credentials = "{credentials_file(seaweedfs, tmp_path)}"\n')
    tracker_port = free_port()
    tracker = f"http://127.0.0.1:{tracker_port}"
    with contextlib.ExitStack() as stack:
        origin = stack.enter_context(
            origin_process(
                tmp_path / "origin",
                *("--config", str(config), "--tracker", tracker),
                *("--storage", storage_url(s3_location)),
            )
        )
        stack.enter_context(tracker_process(tmp_path / "tracker", origin, port=tracker_port))
        image = build_layout(tmp_path / "layout", seed=41, layer_size=2 << 20)
        push_layout(image, origin, "team/app:1")

        def pull(agent: Agent, name: str) -> set[str]:
            out = tmp_path / f"out-{name}"
            source = f"docker://{agent.registry_hostport}/team/app:1"
            skopeo("copy", *SKOPEO_FLAGS, source, f"oci:{out}:latest")
            return read_oci_layout_digests(out)

        with contextlib.ExitStack() as herd:
            agents = [
                herd.enter_context(agent_process(tmp_path / f"agent{i}", origin, tracker))
                for i in range(2)
            ]
            with ThreadPoolExecutor(2) as pool:
                pulled = list(pool.map(pull, agents, ["a", "b"]))
        assert pulled == [image.digests, image.digests]

        blobs = tmp_path / "origin/data/blobs/sha256"
        for layer in (layer for img in image.images for layer in img.layers):
            (blobs / layer.digest[7:9] / layer.digest[7:]).unlink()
        # No peer holds the layers now and the origin cannot seed them: the swarm cannot
        # deliver, so its deadline is only the wait before the fallback this case is about
        # (5 s by default, for each blob in turn; the config's too).
        late = stack.enter_context(
            agent_process(
                tmp_path / "agent-late", origin, tracker, settings={"swarm_deadline": 0.5}
            )
        )
        assert pull(late, "late") == image.digests
        layers = [layer for img in image.images for layer in img.layers]
        until_sync(
            lambda: all((blobs / d.digest[7:9] / d.digest[7:]).exists() for d in layers),
            "the origin's copies of the layers back from the bucket",
        )
