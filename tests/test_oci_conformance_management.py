"""OCI conformance, content management at the origin: deleting tags, manifests and blobs.

Each test runs twice: the content pushed with ``Content-Length`` bodies and chunked.
"""

from __future__ import annotations

import aiohttp
import pytest

from tests.fixtures_origin import StartOrigin
from tests.oci_conformance import (
    FRAMINGS,
    INVALID_TAG,
    UNKNOWN_DIGEST,
    Image,
    Registry,
    digest_of,
    image,
    origin_registry,
    push_image,
    referrer_bytes,
)

REPO = "oci/conformance"


@pytest.fixture(params=FRAMINGS)
async def registry(
    request: pytest.FixtureRequest, start_origin: StartOrigin, http: aiohttp.ClientSession
) -> Registry:
    return await origin_registry(start_origin, http, REPO, request.param)


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


async def test_deleting_a_tag_is_202_and_leaves_the_manifest(registry: Registry) -> None:
    content = await pushed(registry, "tagtest0", "kept")
    answer = await registry.call("DELETE", "manifests/tagtest0")
    assert answer.status == 202, answer.describe()
    (await registry.call("GET", "manifests/tagtest0")).assert_error(404, "MANIFEST_UNKNOWN")
    assert await tags_of(registry) == ["kept"]
    by_digest = await registry.call("GET", f"manifests/{content.digest}")
    assert by_digest.status == 200, by_digest.describe()


async def test_deleting_a_manifest_by_digest_is_202_and_removes_its_tags(
    registry: Registry,
) -> None:
    content = await pushed(registry, "tagtest0", "tagtest1")
    other = image("stays")
    await push_image(registry, "other", other)
    answer = await registry.call("DELETE", f"manifests/{content.digest}")
    assert answer.status == 202, answer.describe()
    gone = await registry.call("GET", f"manifests/{content.digest}")
    gone.assert_error(404, "MANIFEST_UNKNOWN")
    assert (await registry.call("HEAD", f"manifests/{content.digest}")).status == 404
    (await registry.call("GET", "manifests/tagtest0")).assert_error(404, "MANIFEST_UNKNOWN")
    assert await tags_of(registry) == ["other"]


async def test_a_manifest_deleted_twice_is_404_manifest_unknown_the_second_time(
    registry: Registry,
) -> None:
    content = await pushed(registry, "tagtest0")
    assert (await registry.call("DELETE", f"manifests/{content.digest}")).status == 202
    again = await registry.call("DELETE", f"manifests/{content.digest}")
    again.assert_error(404, "MANIFEST_UNKNOWN")


async def test_deleting_a_blob_is_202_and_it_is_then_unknown(registry: Registry) -> None:
    content = await pushed(registry, "tagtest0")
    for blob in (content.config, content.layer):
        answer = await registry.call("DELETE", f"blobs/{digest_of(blob)}")
        assert answer.status == 202, answer.describe()
        gone = await registry.call("GET", f"blobs/{digest_of(blob)}")
        gone.assert_error(404, "BLOB_UNKNOWN")
        assert (await registry.call("HEAD", f"blobs/{digest_of(blob)}")).status == 404


async def test_deleting_what_is_not_there_is_404_with_its_code(registry: Registry) -> None:
    await pushed(registry, "tagtest0")
    (await registry.call("DELETE", f"blobs/{UNKNOWN_DIGEST}")).assert_error(404, "BLOB_UNKNOWN")
    manifest = await registry.call("DELETE", f"manifests/{UNKNOWN_DIGEST}")
    manifest.assert_error(404, "MANIFEST_UNKNOWN")
    tag = await registry.call("DELETE", "manifests/no-such-tag")
    tag.assert_error(404, "MANIFEST_UNKNOWN")


async def test_deleting_an_invalid_tag_is_404_manifest_unknown(registry: Registry) -> None:
    await pushed(registry, "tagtest0")
    answer = await registry.call("DELETE", f"manifests/{INVALID_TAG}")
    answer.assert_error(404, "MANIFEST_UNKNOWN")
    assert await tags_of(registry) == ["tagtest0"]


async def test_a_deleted_referrer_leaves_the_referrers_list(registry: Registry) -> None:
    subject = await pushed(registry, "tagtest0")
    await registry.upload(b"{}")
    await registry.upload(b"signed")
    body = referrer_bytes(subject, "application/vnd.example.signature", b"signed")
    referrer = await registry.pushed_manifest(digest_of(body), body)
    listed = (await registry.call("GET", f"referrers/{subject.digest}")).json()["manifests"]
    assert [entry["digest"] for entry in listed] == [referrer]
    assert (await registry.call("DELETE", f"manifests/{referrer}")).status == 202
    listed = (await registry.call("GET", f"referrers/{subject.digest}")).json()["manifests"]
    assert listed == []
