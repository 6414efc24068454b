"""Tombstones close the cross-machine race of a bucket collection (``origin.gctombstones``).

Two origins on one bucket prefix, in process, each with its own data
directory (no ``gc.lock`` shared, as between machines). The collection runs
with A's; B pushes, *after* a batch has read the bucket's links again and
marked (the window the links alone could not close), a manifest naming an
old blob nothing referenced, which B has no copy of: the blob stays, because
B lifted its tombstone before looking for it. Without a push the blob goes,
in the same run, and no tombstone is left in the bucket either way.
"""

from __future__ import annotations

import logging

import pytest

from krill.origin.gctombstones import TOMBSTONES
from krill.origin.storage_gc import sweep_bucket
from krill.s3backend import S3Backend
from tests.imagebuild import build_image, random_files
from tests.s3_fixtures import s3_location, seaweedfs
from tests.test_origin_s3 import push, push_image
from tests.test_origin_s3_replicas import (
    StartReplica,
    _later,
    bucket,
    bucket_digests,
    pushing_manifest,
    start_replica,
)

__all__ = ["bucket", "s3_location", "seaweedfs", "start_replica"]  # fixtures used here


async def tombstones_left(bucket: S3Backend) -> list[str]:
    return [o.key async for o in bucket.list_objects(TOMBSTONES)]


async def test_a_push_after_the_batch_read_the_links_keeps_the_blob_it_names(
    start_replica: StartReplica, bucket: S3Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="krill.origin.storage_gc")
    a, b = await start_replica("a"), await start_replica("b")
    base = build_image([random_files(61, 1, 4096)])
    await push_image(a.client, "team/base", base)
    assert (await a.client.delete(f"/v2/team/base/manifests/{base.manifest.digest}")).status == 202
    reused = build_image([random_files(61, 1, 4096)], docker=True)  # same layer, new config
    layer = reused.layers[0]
    assert layer.digest == base.layers[0].digest
    # B pushes the new config (the client skips the layer: HEAD said it exists).
    assert (await push(b.client, "team/base", reused.config.data)).status == 201
    assert (await b.client.head(f"/v2/team/base/blobs/{layer.digest}")).status == 200
    assert not (b.data / "blobs/sha256" / layer.digest[7:9] / layer.digest[7:]).exists()

    push_meanwhile = pushing_manifest(b.client, "team/base", "again", reused)
    report = await sweep_bucket(bucket, a.data, 0.0, now=_later, in_batch=push_meanwhile)
    assert layer.digest in await bucket_digests(bucket)
    assert report.objects == 1  # the deleted manifest, not the layer
    assert base.manifest.digest not in await bucket_digests(bucket)
    assert f"gc.bucket_kept_lifted digest={layer.digest}" in caplog.text
    got = await a.client.get(f"/v2/team/base/blobs/{layer.digest}")
    assert got.status == 200 and await got.read() == layer.data
    assert await tombstones_left(bucket) == []


async def test_without_a_push_the_blob_goes_in_the_same_run(
    start_replica: StartReplica, bucket: S3Backend
) -> None:
    a = await start_replica("a")
    image = build_image([random_files(62, 1, 4096)])
    await push_image(a.client, "team/gone", image)
    resp = await a.client.delete(f"/v2/team/gone/manifests/{image.manifest.digest}")
    assert resp.status == 202
    report = await sweep_bucket(bucket, a.data, 0.0, now=_later)
    assert report.objects == 3
    left = await bucket_digests(bucket)
    assert not {b.digest for b in image.blobs()} & left
    assert await tombstones_left(bucket) == []

