"""OCI conformance, content discovery at the origin: the tags list and the referrers API.

Each test runs twice: request bodies with ``Content-Length`` and chunked. The
referrers are the suite's: five manifests name one image as their subject, two
of each artifact type (one typed by its config, one by ``artifactType``) and
an image index, and one more names another image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from krill import oci
from tests.fixtures_origin import digest_of
from tests.oci_conformance import (
    ANNOTATION,
    EMPTY_JSON,
    OCI_EMPTY,
    REPO,
    UNKNOWN_DIGEST,
    Image,
    Registry,
    descriptor,
    image,
    manifest_bytes,
    push_image,
    referrer_bytes,
)

TAGS = ["TEST0", "TEST1", "TEST2", "TEST3", "test0", "test1", "test2", "test3"]  # byte order
BAGEL = "application/vnd.nhl.peanut.butter.bagel"
CROISSANT = "application/vnd.nba.strawberry.jam.croissant"
FOOD_STAND = "application/vnd.food.stand"


async def tagged_eight_times(registry: Registry) -> None:
    pushed = image("tags")
    for tag in TAGS[::-1]:  # pushed out of order
        await push_image(registry, tag, pushed)


def listed_tags(body: bytes) -> list[str]:
    tags: list[str] = json.loads(body)["tags"]
    return tags


async def test_the_tags_list_is_sorted(origin_registry: Registry) -> None:
    await tagged_eight_times(origin_registry)
    answer = await origin_registry.call("GET", "tags/list")
    assert answer.status == 200, answer.describe()
    assert answer.json() == {"name": REPO, "tags": TAGS}
    assert "Link" not in answer.headers


async def test_n_limits_the_tags_listed_and_a_link_names_the_next_page(
    origin_registry: Registry,
) -> None:
    await tagged_eight_times(origin_registry)
    answer = await origin_registry.call("GET", "tags/list", params={"n": "4"})
    assert answer.status == 200, answer.describe()
    assert listed_tags(answer.body) == TAGS[:4]
    link = answer.headers["Link"]
    assert link.endswith('>; rel="next"')
    target = urlsplit(link[link.index("<") + 1 : link.index(">")])
    following = await origin_registry.call("GET", f"{target.path}?{target.query}")
    assert following.status == 200, following.describe()
    assert listed_tags(following.body) == TAGS[4:]
    assert "Link" not in following.headers


async def test_last_starts_the_tags_list_after_that_tag(origin_registry: Registry) -> None:
    await tagged_eight_times(origin_registry)
    answer = await origin_registry.call("GET", "tags/list", params={"n": "2", "last": "TEST3"})
    assert listed_tags(answer.body) == ["test0", "test1"]
    answer = await origin_registry.call("GET", "tags/list", params={"last": "test1"})
    assert listed_tags(answer.body) == ["test2", "test3"]


async def test_n_zero_lists_no_tags(origin_registry: Registry) -> None:
    await tagged_eight_times(origin_registry)
    answer = await origin_registry.call("GET", "tags/list", params={"n": "0"})
    assert answer.status == 200, answer.describe()
    assert answer.json() == {"name": REPO, "tags": []}


@dataclass(frozen=True)
class Referrers:
    subject: Image  # named by five referrers
    other: Image  # named by one
    of_subject: dict[str, tuple[str, str]]  # digest: (artifactType, annotation)
    of_other: str  # digest


def typed_by_config(subject: Image, kind: str, blob: bytes, note: str) -> bytes:
    """The suite's older artifact form: no artifactType, the config's mediaType says it."""
    return manifest_bytes(
        descriptor(kind, blob),
        [descriptor(OCI_EMPTY, EMPTY_JSON)],
        subject=descriptor(oci.OCI_MANIFEST, subject.manifest),
        annotations={ANNOTATION: note},
    )


async def pushed_referrer(registry: Registry, body: bytes, subject: Image, media_type: str) -> str:
    answer = await registry.put_manifest(digest_of(body), body, media_type)
    assert answer.status == 201, answer.describe()
    assert answer.headers["OCI-Subject"] == subject.digest
    return digest_of(body)


async def push_referrers(registry: Registry) -> Referrers:
    """The suite's referrers setup; every manifest put answers ``OCI-Subject``."""
    subject, other = image("subject"), image("other")
    bagel, croissant = (
        b"NHL Peanut Butter on my NHL bagel",
        b"NBA Strawberry Jam on my NBA croissant",
    )
    for blob in (EMPTY_JSON, bagel, croissant):
        await registry.upload(blob)
    manifests = [
        (BAGEL, "test config a", typed_by_config(subject, BAGEL, bagel, "test config a")),
        (BAGEL, "test layer a", referrer_bytes(subject, BAGEL, bagel, "test layer a")),
        (
            CROISSANT,
            "test config b",
            typed_by_config(subject, CROISSANT, croissant, "test config b"),
        ),
        (
            CROISSANT,
            "test layer b",
            referrer_bytes(subject, CROISSANT, croissant, "test layer b"),
        ),
    ]
    of_subject = {}
    for kind, note, body in manifests:
        of_subject[await pushed_referrer(registry, body, subject, oci.OCI_MANIFEST)] = (kind, note)
    members = [descriptor(oci.OCI_MANIFEST, body) for _, _, body in manifests[:2]]
    index = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_INDEX,
        "artifactType": FOOD_STAND,
        "manifests": members,
        "subject": descriptor(oci.OCI_MANIFEST, subject.manifest),
        "annotations": {ANNOTATION: "test index"},
    }
    body = json.dumps(index, indent="\t").encode()
    of_subject[await pushed_referrer(registry, body, subject, oci.OCI_INDEX)] = (
        FOOD_STAND,
        "test index",
    )
    # The subject is pushed after its referrers, the other image before its one.
    await push_image(registry, "subject", subject)
    await push_image(registry, "other", other)
    body = referrer_bytes(other, CROISSANT, croissant)
    of_other = await pushed_referrer(registry, body, other, oci.OCI_MANIFEST)
    return Referrers(subject, other, of_subject, of_other)


async def index_of(registry: Registry, subject: str, **params: str) -> list[dict[str, Any]]:
    answer = await registry.call("GET", f"referrers/{subject}", params=params)
    assert answer.status == 200, answer.describe()
    assert answer.headers["Content-Type"] == oci.OCI_INDEX
    assert answer.json()["schemaVersion"] == 2
    assert answer.json()["mediaType"] == oci.OCI_INDEX
    if params:  # the one filter the spec defines, applied
        assert answer.headers["OCI-Filters-Applied"] == "artifactType"
    else:
        assert "OCI-Filters-Applied" not in answer.headers
    manifests: list[dict[str, Any]] = answer.json()["manifests"]
    return manifests


async def test_referrers_list_every_manifest_naming_the_subject(origin_registry: Registry) -> None:
    referrers = await push_referrers(origin_registry)
    listed = await index_of(origin_registry, referrers.subject.digest)
    assert sorted(entry["digest"] for entry in listed) == sorted(referrers.of_subject)
    for entry in listed:
        kind, note = referrers.of_subject[entry["digest"]]
        assert entry["artifactType"] == kind
        assert entry["annotations"] == {ANNOTATION: note}
        assert entry["mediaType"] in (oci.OCI_MANIFEST, oci.OCI_INDEX)


async def test_referrers_filtered_by_artifact_type_list_only_that_type(
    origin_registry: Registry,
) -> None:
    referrers = await push_referrers(origin_registry)
    listed = await index_of(origin_registry, referrers.subject.digest, artifactType=BAGEL)
    wanted = {digest for digest, (kind, _) in referrers.of_subject.items() if kind == BAGEL}
    assert len(wanted) == 2
    assert {entry["digest"] for entry in listed} == wanted


async def test_referrers_of_another_subject_list_only_its_own(origin_registry: Registry) -> None:
    referrers = await push_referrers(origin_registry)
    listed = await index_of(origin_registry, referrers.other.digest)
    assert [entry["digest"] for entry in listed] == [referrers.of_other]
    assert "annotations" not in listed[0]


async def test_referrers_of_an_unknown_digest_are_an_empty_index(origin_registry: Registry) -> None:
    await push_referrers(origin_registry)
    assert await index_of(origin_registry, UNKNOWN_DIGEST) == []


async def test_referrers_of_a_malformed_digest_are_400_digest_invalid(
    origin_registry: Registry,
) -> None:
    # The spec allows 400 or 404 here; Krill's is a 400 with the error JSON.
    answer = await origin_registry.call("GET", "referrers/sha256:totallywrong")
    answer.assert_error(400, "DIGEST_INVALID")
