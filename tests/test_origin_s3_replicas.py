"""Two origins on one bucket are one registry (issue 17's first check), and gc over it is safe.

The same as ``krill origin`` processes (push to one, pull from the other, one killed, gc,
the blob's owner seeding it) is ``tests/test_origin_s3_replicas_processes.py``.

In process (two apps on the same prefix, each with its own data directory,
so no ``gc.lock`` is shared, as between machines): a tag moved on one is
seen by the other once its tag TTL has passed, with its history; a manifest pushed to one
origin naming a blob pushed to the other is accepted; a manifest pushed
while a bucket collection is between its mark and its sweep, naming an old
unreferenced blob, keeps that blob; an upload in progress survives a
bucket collection, and one begun on the other origin fails cleanly there;
a manifest push puts back a blob it names that left the bucket meanwhile;
a deletion on one origin reaches the other's cached links at its
collection.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from krill import oci
from krill.digests import Digest
from krill.origin.appkeys import TAG_HISTORY
from krill.origin.config import OriginConfig
from krill.origin.deltas import DELTA_ENGINE
from krill.origin.gc import GarbageCollector
from krill.origin.server import create_app
from krill.origin.storage_deltaindex import index_key
from krill.origin.storage_deltas import BUCKET_DELTAS
from krill.origin.storage_gc import reconcile_with_bucket, sweep_bucket
from krill.origin.storage_metadata import TAG_TTL
from krill.s3backend import S3Backend, S3Location
from tests.clocks import ManualClock
from tests.fixtures_origin import digest_of, error_code
from tests.imagebuild import (
    Image,
    build_image,
    random_files,
)
from tests.origin_auth import write_auth_files
from tests.s3_fixtures import SeaweedFS, s3_location, seaweedfs
from tests.test_delta_origin import _settle as settle
from tests.test_delta_origin import _versions as delta_versions
from tests.test_origin_referrers import SIGNATURE, artifact
from tests.test_origin_s3 import credentials_file, payload, push, push_image, storage_url

__all__ = ["s3_location", "seaweedfs"]  # fixtures used here


# In process: two apps on one prefix.


@dataclass
class Replica:
    client: TestClient
    data: Path
    clock: ManualClock
    app: web.Application


class StartReplica(Protocol):
    def __call__(
        self, name: str, *, deltas: bool = False, auth: Path | None = None
    ) -> Awaitable[Replica]: ...


@pytest.fixture
def start_replica(
    tmp_path: Path,
    seaweedfs: SeaweedFS,
    s3_location: S3Location,
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
) -> StartReplica:
    async def start(name: str, *, deltas: bool = False, auth: Path | None = None) -> Replica:
        clock = ManualClock()
        data = tmp_path / name
        config = OriginConfig(
            data=data,
            storage=storage_url(s3_location),
            s3_credentials=credentials_file(seaweedfs, tmp_path),
            deltas=deltas,
            auth=auth,
        )
        app = create_app(config, clock=clock)
        server: TestServer = await aiohttp_server(app)
        return Replica(await aiohttp_client(server), data, clock, app)

    return start


@pytest.fixture
async def bucket(seaweedfs: SeaweedFS, s3_location: S3Location) -> AsyncIterator[S3Backend]:
    backend = S3Backend(s3_location, seaweedfs.credentials)
    yield backend
    await backend.close()


async def manifest_digest(client: TestClient, repo: str, tag: str) -> str | None:
    resp = await client.head(f"/v2/{repo}/manifests/{tag}")
    return resp.headers["Docker-Content-Digest"] if resp.status == 200 else None


async def test_a_tag_moved_on_one_origin_is_seen_by_the_other(
    start_replica: StartReplica,
) -> None:
    a, b = await start_replica("a"), await start_replica("b")
    first = build_image([random_files(40, 1, 2048)])
    second = build_image([random_files(41, 1, 2048)])
    await push_image(a.client, "team/app", first)
    assert await manifest_digest(b.client, "team/app", "v1") == first.manifest.digest
    await push_image(a.client, "team/app", second)
    # B trusts what it read for TAG_TTL seconds (its clock stands still), then reads again.
    assert await manifest_digest(b.client, "team/app", "v1") == first.manifest.digest
    b.clock.advance(TAG_TTL)
    assert await manifest_digest(b.client, "team/app", "v1") == second.manifest.digest
    tags = await (await b.client.get("/v2/team/app/tags/list")).json()
    assert tags["tags"] == ["v1"]
    assert (await a.client.delete("/v2/team/app/manifests/v1")).status == 202
    b.clock.advance(TAG_TTL)
    assert await manifest_digest(b.client, "team/app", "v1") is None


async def test_tag_history_recorded_on_one_origin_reaches_the_other(
    start_replica: StartReplica,
) -> None:
    """B's delta planner knows the versions pushed through A (its previous manifests)."""
    a, b = await start_replica("a"), await start_replica("b")
    first = build_image([random_files(50, 1, 2048)])
    second = build_image([random_files(51, 1, 2048)])
    await push_image(a.client, "team/app", first)
    await push_image(a.client, "team/app", second)
    assert await manifest_digest(b.client, "team/app", "v1") == second.manifest.digest
    history = b.app[TAG_HISTORY]
    previous = history.previous_manifests(
        "team/app", 5, exclude=Digest.parse(second.manifest.digest)
    )
    assert previous == [Digest.parse(first.manifest.digest)]
    moves = [(e.old, e.new) for e in history.history("team/app")]
    assert moves[:2] == [
        (None, Digest.parse(first.manifest.digest)),
        (Digest.parse(first.manifest.digest), Digest.parse(second.manifest.digest)),
    ]


async def test_a_manifest_may_name_blobs_pushed_through_the_other_origin(
    start_replica: StartReplica,
) -> None:
    a, b = await start_replica("a"), await start_replica("b")
    image = build_image([random_files(42, 1, 4096)])
    for blob in image.blobs():
        assert (await push(a.client, "team/app", blob.data)).status == 201
    resp = await b.client.put(
        "/v2/team/app/manifests/v1",
        data=image.manifest.data,
        headers={"Content-Type": image.manifest.media_type},
    )
    assert resp.status == 201, await resp.text()
    for blob in image.blobs():
        got = await a.client.get(f"/v2/team/app/blobs/{blob.digest}")
        assert got.status == 200 and await got.read() == blob.data
    missing = payload(43, 100)
    lacking = build_image([random_files(44, 1, 100)])
    for blob in lacking.blobs():
        if blob is not lacking.layers[0]:
            assert (await push(a.client, "team/app", blob.data)).status == 201
    resp = await b.client.put(
        "/v2/team/app/manifests/v2",
        data=lacking.manifest.data,
        headers={"Content-Type": lacking.manifest.media_type},
    )
    assert resp.status == 400 and await error_code(resp) == "MANIFEST_BLOB_UNKNOWN"
    assert digest_of(missing) not in await resp.text()
    assert lacking.layers[0].digest in await resp.text()


def pushing_manifest(
    client: TestClient, repo: str, reference: str, image: Image
) -> Callable[[], Awaitable[None]]:
    """A ``sweep_bucket`` hook: push ``image``'s manifest (201) while the collection runs."""

    async def push_manifest() -> None:
        resp = await client.put(
            f"/v2/{repo}/manifests/{reference}",
            data=image.manifest.data,
            headers={"Content-Type": image.manifest.media_type},
        )
        assert resp.status == 201, await resp.text()

    return push_manifest


async def bucket_digests(bucket: S3Backend) -> set[str]:
    return {str(info.digest) async for info in bucket.list()}


async def test_a_push_on_another_origin_during_a_bucket_collection_keeps_its_blobs(
    start_replica: StartReplica, bucket: S3Backend
) -> None:
    """The collection runs with A's data directory; B (another machine, as far as locks
    go) pushes, between the collection's mark and its sweep, a manifest naming a blob
    nothing referenced when the collection marked (and old enough to go)."""
    a, b = await start_replica("a"), await start_replica("b")
    base = build_image([random_files(45, 1, 4096)])
    await push_image(a.client, "team/base", base)
    assert (await a.client.delete(f"/v2/team/base/manifests/{base.manifest.digest}")).status == 202
    reused = build_image([random_files(45, 1, 4096)], docker=True)  # same layer bytes, config
    assert reused.layers[0].digest == base.layers[0].digest

    push_meanwhile = pushing_manifest(b.client, "team/base", "again", reused)
    report = await sweep_bucket(bucket, a.data, 0.0, now=_later, between=push_meanwhile)
    kept = {b.digest for b in reused.blobs()} | {reused.manifest.digest}
    assert kept <= await bucket_digests(bucket)
    assert report.objects == 1  # only the deleted manifest's own object
    got = await a.client.get(f"/v2/team/base/blobs/{reused.layers[0].digest}")
    assert got.status == 200 and await got.read() == reused.layers[0].data


async def test_an_upload_in_progress_survives_a_bucket_collection(
    start_replica: StartReplica, bucket: S3Backend
) -> None:
    a = await start_replica("a")
    await push_image(a.client, "team/app", build_image([random_files(47, 1, 2048)]))
    data = payload(48, 300_000)
    resp = await a.client.post("/v2/team/app/blobs/uploads/")
    location = resp.headers["Location"]
    assert (await a.client.patch(location, data=data[:1000])).status == 202
    await sweep_bucket(bucket, a.data, 0.0, now=_later)
    resp = await a.client.put(location, params={"digest": digest_of(data)}, data=data[1000:])
    assert resp.status == 201
    assert digest_of(data) in await bucket_digests(bucket)


async def test_an_upload_begun_on_one_origin_fails_cleanly_on_the_other(
    start_replica: StartReplica, bucket: S3Backend
) -> None:
    """Upload sessions are per origin: a client sent to another replica midway (its origin
    died) is told to start again, and that upload lands in the bucket."""
    a, b = await start_replica("a"), await start_replica("b")
    data = payload(49, 200_000)
    resp = await a.client.post("/v2/team/app/blobs/uploads/")
    location = resp.headers["Location"]
    assert (await a.client.patch(location, data=data[:1000])).status == 202
    resp = await b.client.patch(location, data=data[1000:2000])
    assert resp.status == 404 and await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"
    assert "start the upload again" in await resp.text()
    assert (await push(b.client, "team/app", data)).status == 201
    assert digest_of(data) in await bucket_digests(bucket)


async def test_a_manifest_push_puts_back_a_blob_collected_meanwhile(
    start_replica: StartReplica, bucket: S3Backend
) -> None:
    """A blob a manifest names, gone from the bucket when the manifest is linked there (a
    collection on another machine took it), is put back from this origin's local copy."""
    a = await start_replica("a")
    image = build_image([random_files(52, 1, 4096)])
    await push_image(a.client, "team/app", image)
    layer = Digest.parse(image.layers[0].digest)
    assert await bucket.delete(layer)
    resp = await a.client.put(
        "/v2/team/app/manifests/again",
        data=image.manifest.data,
        headers={"Content-Type": image.manifest.media_type},
    )
    assert resp.status == 201
    assert await bucket.exists(layer)


def _later() -> float:
    """A collection's "now" far enough ahead that everything pushed counts as old."""
    return time.time() + 3600


async def test_a_deletion_reaches_the_other_origins_cache_at_its_collection(
    start_replica: StartReplica, bucket: S3Backend
) -> None:
    a, b = await start_replica("a"), await start_replica("b")
    image = build_image([random_files(46, 1, 4096)])
    await push_image(a.client, "team/app", image)
    layer = f"/v2/team/app/blobs/{image.layers[0].digest}"
    assert (await b.client.get(layer)).status == 200  # B now has the link cached
    assert (await a.client.delete(f"/v2/team/app/manifests/{image.manifest.digest}")).status == 202
    await sweep_bucket(bucket, a.data, 0.0, now=_later)
    assert not (await bucket_digests(bucket)) & {b.digest for b in image.blobs()}
    assert (await a.client.get(layer)).status == 404
    await reconcile_with_bucket(bucket, b.data, 0.0, now=_later)  # B's collection:
    await asyncio.to_thread(GarbageCollector(b.data, 0.0, now=_later).collect)
    assert (await b.client.get(layer)).status == 404
    manifest = f"/v2/team/app/manifests/{image.manifest.digest}"
    assert (await b.client.get(manifest)).status == 404


async def test_the_catalog_and_referrers_of_one_origin_are_answered_by_the_other(
    start_replica: StartReplica,
) -> None:
    a, b = await start_replica("a"), await start_replica("b")
    image = build_image([random_files(61, 1, 4096)])
    await push_image(a.client, "team/cataloged", image)
    subject = image.manifest.data
    signature = json.dumps(artifact(b"{}", subject, SIGNATURE)).encode()
    assert (await push(a.client, "team/cataloged", b"{}")).status == 201
    resp = await a.client.put(
        f"/v2/team/cataloged/manifests/{digest_of(signature)}",
        data=signature,
        headers={"Content-Type": oci.OCI_MANIFEST},
    )
    assert resp.status == 201, await resp.text()

    resp = await b.client.get("/v2/_catalog")
    assert resp.status == 200 and "team/cataloged" in (await resp.json())["repositories"]
    # With --auth the auth middleware answers the catalog itself: still the bucket's.
    await push_image(a.client, "public/app", build_image([random_files(62, 1, 4096)]))
    guarded = await start_replica("c", auth=write_auth_files(b.data.parent / "auth"))
    resp = await guarded.client.get("/v2/_catalog")  # anonymous: what public/** allows
    assert resp.status == 200 and (await resp.json())["repositories"] == ["public/app"]
    resp = await b.client.get(f"/v2/team/cataloged/referrers/{digest_of(subject)}")
    assert resp.status == 200
    listed = [m["digest"] for m in (await resp.json())["manifests"]]
    assert listed == [digest_of(signature)]


async def push_tagged(client: TestClient, repo: str, image: Image, tag: str) -> None:
    for blob in image.blobs():
        assert (await push(client, repo, blob.data)).status == 201
    resp = await client.put(
        f"/v2/{repo}/manifests/{tag}",
        data=image.manifest.data,
        headers={"Content-Type": image.manifest.media_type},
    )
    assert resp.status == 201, await resp.text()


@pytest.mark.slow
async def test_a_delta_computed_by_one_origin_is_served_by_the_other(
    start_replica: StartReplica, bucket: S3Backend
) -> None:
    a, b = await start_replica("a", deltas=True), await start_replica("b", deltas=True)
    v1, v2 = delta_versions()
    await push_tagged(a.client, "team/app", v1, "latest")
    await push_tagged(a.client, "team/app", v2, "latest")  # the move: A computes the deltas
    await settle(a.app[DELTA_ENGINE])
    target, base = v2.layers[1].digest, v1.layers[1].digest
    lookup = f"/krill/v1/deltas/{target}"
    params = {"have": base, "repo": "team/app"}
    on_a = await (await a.client.get(lookup, params=params)).json()
    assert on_a["status"] == "ok", on_a
    await a.app[BUCKET_DELTAS].settle()  # shared in the background
    assert await bucket.get_object(index_key(Digest.parse(target))) is not None

    on_b = await (await b.client.get(lookup, params=params)).json()
    assert on_b["status"] == "ok" and on_b["delta"] == on_a["delta"], on_b
    from_a = await (await a.client.get(f"/v2/team/app/blobs/{on_a['delta']}")).read()
    resp = await b.client.get(f"/v2/team/app/blobs/{on_b['delta']}")
    assert resp.status == 200 and await resp.read() == from_a
