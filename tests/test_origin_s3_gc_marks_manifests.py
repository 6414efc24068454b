"""The bucket's gc reads a manifest even when its bytes were first marked as a layer.

A user with write on one repository pushed a public image's manifest bytes as a
blob of their own and named it as a layer. The mark (``storage_gc._Marker``, as
``gc.GarbageCollector``) saw those bytes as live and never read them as a
manifest, so the public image's layers left the bucket (security review, stop 39).
"""

from __future__ import annotations

import json
from pathlib import Path

from krill import oci
from krill.s3backend import S3Backend, S3Location
from tests.fixtures_origin import digest_of
from tests.imagebuild import build_image, random_files
from tests.s3_fixtures import SeaweedFS
from tests.test_origin_s3 import (  # noqa: F401  (fixtures by name)
    StartS3Origin,
    bucket,
    bucket_digests,
    push,
    push_image,
    run_gc,
    start_s3_origin,
)


async def test_a_manifest_pushed_as_a_layer_keeps_its_own_layers_in_the_bucket(
    start_s3_origin: StartS3Origin,  # noqa: F811
    seaweedfs: SeaweedFS,
    s3_location: S3Location,
    bucket: S3Backend,  # noqa: F811
    tmp_path: Path,
) -> None:
    client = (await start_s3_origin(s3_location)).client
    public = build_image([random_files(21, 2, 4096)])
    await push_image(client, "public/app", public)
    config = b"{}"
    for data in (config, public.manifest.data):  # "aaa" is marked before "public"
        assert (await push(client, "aaa/evil", data)).status == 201
    evil = json.dumps({
        "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": digest_of(config), "size": 2},
        "layers": [{"mediaType": oci.OCI_LAYER_GZIP, "digest": public.manifest.digest,
                    "size": len(public.manifest.data)}],
    }).encode()  # fmt: skip
    put = await client.put(
        "/v2/aaa/evil/manifests/1", data=evil, headers={"Content-Type": oci.OCI_MANIFEST}
    )
    assert put.status == 201, await put.text()
    before = await bucket_digests(bucket)

    await run_gc(seaweedfs, s3_location, tmp_path)
    assert await bucket_digests(bucket) == before, "every object is still named by a manifest"
    assert {b.digest for b in public.blobs()} <= before
