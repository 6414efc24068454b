"""OCI conformance, pushing manifests to the origin: by tag, by digest, and what it refuses.

Each test runs twice: request bodies with ``Content-Length`` and chunked.
"""

from __future__ import annotations

import json

from krill import oci
from tests.fixtures_origin import digest_of
from tests.oci_conformance import (
    EMPTY_JSON,
    INVALID_TAG,
    OCI_EMPTY,
    REPO,
    UNKNOWN_DIGEST,
    Image,
    Registry,
    config_bytes,
    descriptor,
    image,
    manifest_bytes,
    push_image,
)


async def blobs_of(registry: Registry, pushed: Image) -> None:
    await registry.upload(pushed.config)
    await registry.upload(pushed.layer)


async def signature_is_accepted_naming(registry: Registry, subject: Image) -> None:
    """A signature of ``subject``, put by digest: 201, its ``OCI-Subject`` naming ``subject``."""
    await registry.upload(EMPTY_JSON)
    body = manifest_bytes(
        descriptor(OCI_EMPTY, EMPTY_JSON),
        [descriptor(OCI_EMPTY, EMPTY_JSON)],
        artifactType="application/vnd.example.sig",
        subject=descriptor(oci.OCI_MANIFEST, subject.manifest),
    )
    answer = await registry.put_manifest(digest_of(body), body)
    assert answer.status == 201, answer.describe()
    assert answer.headers["OCI-Subject"] == subject.digest


async def put_is_refused(registry: Registry, reference: str, pushed: Image, code: str) -> None:
    """Its blobs pushed, ``pushed``'s manifest put as ``reference`` is 400 ``code``: unstored."""
    await blobs_of(registry, pushed)
    answer = await registry.put_manifest(reference, pushed.manifest)
    answer.assert_error(400, code)
    (await registry.call("GET", f"manifests/{pushed.digest}")).assert_error(404, "MANIFEST_UNKNOWN")


async def test_a_manifest_put_by_tag_is_201_with_its_location_and_digest(
    origin_registry: Registry,
) -> None:
    pushed = image("by-tag")
    await blobs_of(origin_registry, pushed)
    for tag in ("test0", "test1", "test2", "test3"):
        answer = await origin_registry.put_manifest(tag, pushed.manifest)
        assert answer.status == 201, answer.describe()
        assert answer.location == f"/v2/{REPO}/manifests/{pushed.digest}"
        assert answer.headers["Docker-Content-Digest"] == pushed.digest
        fetched = await origin_registry.call("GET", f"manifests/{tag}")
        assert fetched.body == pushed.manifest


async def test_a_manifest_put_by_its_digest_is_served_by_that_digest(
    origin_registry: Registry,
) -> None:
    pushed = image("by-digest")
    await blobs_of(origin_registry, pushed)
    answer = await origin_registry.put_manifest(pushed.digest, pushed.manifest)
    assert answer.status == 201, answer.describe()
    assert answer.headers["Docker-Content-Digest"] == pushed.digest
    fetched = await origin_registry.call(
        "GET", f"manifests/{pushed.digest}", headers={"Accept": oci.OCI_MANIFEST}
    )
    assert fetched.status == 200
    assert fetched.body == pushed.manifest
    assert fetched.headers["Content-Type"] == oci.OCI_MANIFEST


async def test_a_manifest_with_no_layers_is_accepted(origin_registry: Registry) -> None:
    config = config_bytes("no-layers")
    await origin_registry.upload(config)
    body = manifest_bytes(descriptor(oci.OCI_CONFIG, config), [])
    answer = await origin_registry.put_manifest("emptylayer", body)
    assert answer.status == 201, answer.describe()
    assert answer.location == f"/v2/{REPO}/manifests/{digest_of(body)}"


async def test_a_manifest_with_no_media_type_field_takes_the_content_type(
    origin_registry: Registry,
) -> None:
    # The suite's empty-layer manifest leaves mediaType out of the body.
    config = config_bytes("no-media-type")
    await origin_registry.upload(config)
    doc = json.loads(manifest_bytes(descriptor(oci.OCI_CONFIG, config), []))
    del doc["mediaType"]
    body = json.dumps(doc, indent="\t").encode()
    await origin_registry.pushed_manifest("untyped", body)
    fetched = await origin_registry.call("GET", "manifests/untyped")
    assert fetched.headers["Content-Type"] == oci.OCI_MANIFEST
    assert fetched.body == body


async def test_a_manifest_naming_a_blob_not_pushed_is_400_manifest_blob_unknown(
    origin_registry: Registry,
) -> None:
    body = manifest_bytes({"mediaType": oci.OCI_CONFIG, "digest": UNKNOWN_DIGEST, "size": 11}, [])
    answer = await origin_registry.put_manifest("missingblobs", body)
    answer.assert_error(400, "MANIFEST_BLOB_UNKNOWN")
    (await origin_registry.call("GET", "manifests/missingblobs")).assert_error(
        404, "MANIFEST_UNKNOWN"
    )


async def test_a_foreign_layer_not_pushed_is_refused_as_manifest_blob_unknown(
    origin_registry: Registry,
) -> None:
    # The spec lets a registry refuse non-distributable layers; Krill's agents
    # fetch every layer from the swarm or the origin, so the origin must hold it.
    config = config_bytes("foreign")
    await origin_registry.upload(config)
    absent = "sha256:" + "ab" * 32
    foreign = {
        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "digest": absent,
        "size": 1234,
        "urls": [f"https://mcr.microsoft.com/v2/windows/servercore/blobs/{absent}"],
    }
    config_descriptor = descriptor(oci.DOCKER_CONFIG, config)
    body = manifest_bytes(config_descriptor, [foreign], mediaType=oci.DOCKER_MANIFEST)
    answer = await origin_registry.put_manifest("foreign", body, oci.DOCKER_MANIFEST)
    answer.assert_error(400, "MANIFEST_BLOB_UNKNOWN")


async def test_a_body_that_is_no_manifest_is_400_manifest_invalid(
    origin_registry: Registry,
) -> None:
    answer = await origin_registry.put_manifest("garbage", b"blablabla")
    answer.assert_error(400, "MANIFEST_INVALID")


async def test_a_put_by_a_digest_the_bytes_do_not_hash_to_is_400_digest_invalid(
    origin_registry: Registry,
) -> None:
    await put_is_refused(origin_registry, UNKNOWN_DIGEST, image("mismatch"), "DIGEST_INVALID")


async def test_a_put_under_an_invalid_tag_is_400_manifest_invalid(
    origin_registry: Registry,
) -> None:
    await put_is_refused(origin_registry, INVALID_TAG, image("invalid-tag"), "MANIFEST_INVALID")


async def test_an_image_index_comes_back_byte_exact_with_its_content_type(
    origin_registry: Registry,
) -> None:
    pushed = image("indexed")
    await push_image(origin_registry, "single", pushed)
    platform = {"architecture": "amd64", "os": "linux"}
    entry = descriptor(oci.OCI_MANIFEST, pushed.manifest, platform=platform)
    doc = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [entry]}
    index = json.dumps(doc, indent="\t").encode()
    answer = await origin_registry.put_manifest("multi", index, oci.OCI_INDEX)
    assert answer.status == 201, answer.describe()
    fetched = await origin_registry.call(
        "GET", "manifests/multi", headers={"Accept": oci.OCI_INDEX}
    )
    assert fetched.status == 200
    assert fetched.headers["Content-Type"] == oci.OCI_INDEX
    assert fetched.headers["Docker-Content-Digest"] == digest_of(index)
    assert fetched.body == index


async def test_a_manifest_with_a_subject_is_answered_with_oci_subject(
    origin_registry: Registry,
) -> None:
    subject = image("subject")
    await push_image(origin_registry, "subject", subject)
    await signature_is_accepted_naming(origin_registry, subject)


async def test_a_manifest_whose_subject_is_not_pushed_is_still_accepted(
    origin_registry: Registry,
) -> None:
    # The spec: a registry MUST accept a manifest whose subject it does not hold.
    await signature_is_accepted_naming(origin_registry, image("never-pushed"))
