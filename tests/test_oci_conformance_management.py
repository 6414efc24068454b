"""OCI conformance, content management at the origin: deleting tags, manifests and blobs.

Each test runs twice: the content pushed with ``Content-Length`` bodies and chunked.
"""

from __future__ import annotations

from tests.fixtures_origin import digest_of
from tests.oci_conformance import (
    INVALID_TAG,
    UNKNOWN_DIGEST,
    Image,
    Registry,
    image,
    push_image,
    referrer_bytes,
)


async def tags_of(registry: Registry) -> list[str]:
    answer = await registry.call("GET", "tags/list")
    assert answer.status == 200, answer.describe()
    tags: list[str] = answer.json()["tags"]
    return tags


async def pushed(registry: Registry, *tags: str) -> Image:
    content = image("management")
    for tag in tags:
        await push_image(registry, tag, content)
    return content


async def test_deleting_a_tag_is_202_and_leaves_the_manifest(origin_registry: Registry) -> None:
    content = await pushed(origin_registry, "tagtest0", "kept")
    answer = await origin_registry.call("DELETE", "manifests/tagtest0")
    assert answer.status == 202, answer.describe()
    (await origin_registry.call("GET", "manifests/tagtest0")).assert_error(404, "MANIFEST_UNKNOWN")
    assert await tags_of(origin_registry) == ["kept"]
    by_digest = await origin_registry.call("GET", f"manifests/{content.digest}")
    assert by_digest.status == 200, by_digest.describe()


async def test_deleting_a_manifest_by_digest_is_202_and_removes_its_tags(
    origin_registry: Registry,
) -> None:
    content = await pushed(origin_registry, "tagtest0", "tagtest1")
    other = image("stays")
    await push_image(origin_registry, "other", other)
    answer = await origin_registry.call("DELETE", f"manifests/{content.digest}")
    assert answer.status == 202, answer.describe()
    gone = await origin_registry.call("GET", f"manifests/{content.digest}")
    gone.assert_error(404, "MANIFEST_UNKNOWN")
    assert (await origin_registry.call("HEAD", f"manifests/{content.digest}")).status == 404
    (await origin_registry.call("GET", "manifests/tagtest0")).assert_error(404, "MANIFEST_UNKNOWN")
    assert await tags_of(origin_registry) == ["other"]


async def test_a_manifest_deleted_twice_is_404_manifest_unknown_the_second_time(
    origin_registry: Registry,
) -> None:
    content = await pushed(origin_registry, "tagtest0")
    assert (await origin_registry.call("DELETE", f"manifests/{content.digest}")).status == 202
    again = await origin_registry.call("DELETE", f"manifests/{content.digest}")
    again.assert_error(404, "MANIFEST_UNKNOWN")


async def test_deleting_a_blob_is_202_and_it_is_then_unknown(origin_registry: Registry) -> None:
    content = await pushed(origin_registry, "tagtest0")
    for blob in (content.config, content.layer):
        answer = await origin_registry.call("DELETE", f"blobs/{digest_of(blob)}")
        assert answer.status == 202, answer.describe()
        gone = await origin_registry.call("GET", f"blobs/{digest_of(blob)}")
        gone.assert_error(404, "BLOB_UNKNOWN")
        assert (await origin_registry.call("HEAD", f"blobs/{digest_of(blob)}")).status == 404


async def test_deleting_what_is_not_there_is_404_with_its_code(origin_registry: Registry) -> None:
    await pushed(origin_registry, "tagtest0")
    (await origin_registry.call("DELETE", f"blobs/{UNKNOWN_DIGEST}")).assert_error(
        404, "BLOB_UNKNOWN"
    )
    manifest = await origin_registry.call("DELETE", f"manifests/{UNKNOWN_DIGEST}")
    manifest.assert_error(404, "MANIFEST_UNKNOWN")
    tag = await origin_registry.call("DELETE", "manifests/no-such-tag")
    tag.assert_error(404, "MANIFEST_UNKNOWN")


async def test_deleting_an_invalid_tag_is_404_manifest_unknown(origin_registry: Registry) -> None:
    await pushed(origin_registry, "tagtest0")
    answer = await origin_registry.call("DELETE", f"manifests/{INVALID_TAG}")
    answer.assert_error(404, "MANIFEST_UNKNOWN")
    assert await tags_of(origin_registry) == ["tagtest0"]


async def test_a_deleted_referrer_leaves_the_referrers_list(origin_registry: Registry) -> None:
    subject = await pushed(origin_registry, "tagtest0")
    await origin_registry.upload(b"{}")
    await origin_registry.upload(b"signed")
    body = referrer_bytes(subject, "application/vnd.example.signature", b"signed")
    referrer = await origin_registry.pushed_manifest(digest_of(body), body)
    listed = (await origin_registry.call("GET", f"referrers/{subject.digest}")).json()["manifests"]
    assert [entry["digest"] for entry in listed] == [referrer]
    assert (await origin_registry.call("DELETE", f"manifests/{referrer}")).status == 202
    listed = (await origin_registry.call("GET", f"referrers/{subject.digest}")).json()["manifests"]
    assert listed == []
