"""OCI conformance, pulling: from the origin, and from an agent in front of it.

Each test runs against both: the origin (in this process, on loopback) holds
an image tagged ``tagtest0``, a second manifest pushed by digest and two
referrers of the first; the agent (the real node, in this process, swarm off)
pulls through from that origin. The agent's endpoint is pull-only: pushes
are checked in tests/test_oci_conformance_push*.py, against the origin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from krill import oci
from tests.fixtures_origin import StartOrigin, digest_of
from tests.oci_conformance import (
    INVALID_TAG,
    REPO,
    UNKNOWN_DIGEST,
    Image,
    Registry,
    image,
    push_image,
    referrer_bytes,
    start_origin_registry,
)
from tests.test_agent_faults import in_process_agent

TAG = "tagtest0"
SIGNATURE = "application/vnd.example.signature"
SBOM = "application/vnd.example.sbom"


@dataclass(frozen=True)
class Pulled:
    server: str  # "origin" or "agent"
    registry: Registry  # the origin's or the agent's endpoint
    tagged: Image  # pushed under TAG
    by_digest: Image  # pushed by digest only
    referrers: dict[str, bytes]  # the manifests naming ``tagged`` as subject, by artifactType


@pytest.fixture(params=["origin", "agent"])
async def pulled(
    request: pytest.FixtureRequest,
    start_origin: StartOrigin,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> AsyncIterator[Pulled]:
    origin = await start_origin_registry(start_origin, http, REPO, "content-length")
    tagged, by_digest = image("pull-0"), image("pull-1")
    await push_image(origin, TAG, tagged)
    await push_image(origin, by_digest.digest, by_digest)
    referrers = {}
    for artifact_type, blob in ((SIGNATURE, b"signed"), (SBOM, b"a bill of materials")):
        await origin.upload(b"{}")
        await origin.upload(blob)
        body = referrer_bytes(tagged, artifact_type, blob)
        referrers[artifact_type] = body
        await origin.pushed_manifest(digest_of(body), body)
    if request.param == "origin":
        yield Pulled(request.param, origin, tagged, by_digest, referrers)
        return
    async with in_process_agent(tmp_path / "agent", origin.base) as agent:
        yield Pulled(
            request.param, Registry(http, agent.registry, REPO), tagged, by_digest, referrers
        )


async def test_the_base_endpoint_answers_get_and_head_with_200(pulled: Pulled) -> None:
    assert (await pulled.registry.call("GET", "/v2/")).status == 200
    assert (await pulled.registry.call("HEAD", "/v2/")).status == 200


async def test_a_manifest_by_tag_comes_with_its_digest_type_and_length(pulled: Pulled) -> None:
    manifest = pulled.tagged.manifest
    answer = await pulled.registry.call(
        "GET", f"manifests/{TAG}", headers={"Accept": oci.OCI_MANIFEST}
    )
    assert answer.status == 200, answer.describe()
    assert answer.body == manifest
    assert answer.headers["Docker-Content-Digest"] == digest_of(manifest)
    assert answer.headers["Content-Type"] == oci.OCI_MANIFEST == answer.json()["mediaType"]
    assert answer.headers["Content-Length"] == str(len(manifest))


async def test_a_manifest_by_digest_is_served_for_each_pushed_one(pulled: Pulled) -> None:
    for pushed in (pulled.tagged, pulled.by_digest):
        answer = await pulled.registry.call(
            "GET", f"manifests/{pushed.digest}", headers={"Accept": oci.OCI_MANIFEST}
        )
        assert answer.status == 200, answer.describe()
        assert answer.body == pushed.manifest
        assert answer.headers["Docker-Content-Digest"] == pushed.digest


async def test_a_manifest_head_answers_the_headers_a_get_does(pulled: Pulled) -> None:
    for reference in (TAG, pulled.tagged.digest, pulled.by_digest.digest):
        path = f"manifests/{reference}"
        get = await pulled.registry.call("GET", path, headers={"Accept": oci.OCI_MANIFEST})
        head = await pulled.registry.call("HEAD", path, headers={"Accept": oci.OCI_MANIFEST})
        assert head.status == 200, head.describe()
        assert head.body == b""
        for header in ("Docker-Content-Digest", "Content-Type", "Content-Length"):
            assert head.headers[header] == get.headers[header], header


async def test_a_blob_get_answers_its_bytes_and_digest(pulled: Pulled) -> None:
    for blob in (pulled.tagged.config, pulled.tagged.layer):
        answer = await pulled.registry.call("GET", f"blobs/{digest_of(blob)}")
        assert answer.status == 200, answer.describe()
        assert answer.body == blob
        assert answer.headers["Docker-Content-Digest"] == digest_of(blob)
        assert answer.headers["Content-Length"] == str(len(blob))


async def test_a_blob_head_answers_its_length_and_digest_without_a_body(pulled: Pulled) -> None:
    blob = pulled.tagged.layer
    answer = await pulled.registry.call("HEAD", f"blobs/{digest_of(blob)}")
    assert answer.status == 200, answer.describe()
    assert answer.body == b""
    assert answer.headers["Content-Length"] == str(len(blob))
    assert answer.headers["Docker-Content-Digest"] == digest_of(blob)


async def test_a_blob_range_is_206_with_those_bytes(pulled: Pulled) -> None:
    blob = pulled.tagged.layer
    answer = await pulled.registry.call(
        "GET", f"blobs/{digest_of(blob)}", headers={"Range": "bytes=0-9"}
    )
    assert answer.status == 206, answer.describe()
    assert answer.body == blob[:10]
    assert answer.headers["Content-Range"] == f"bytes 0-9/{len(blob)}"


async def test_a_range_past_the_blob_is_416_range_invalid(pulled: Pulled) -> None:
    # RANGE_INVALID is Krill's code (and CNCF distribution's), not in the spec's table.
    answer = await pulled.registry.call(
        "GET", f"blobs/{digest_of(pulled.tagged.layer)}", headers={"Range": "bytes=99999999-"}
    )
    answer.assert_error(416, "RANGE_INVALID")


async def test_an_unknown_blob_is_404_blob_unknown(pulled: Pulled) -> None:
    (await pulled.registry.call("GET", f"blobs/{UNKNOWN_DIGEST}")).assert_error(404, "BLOB_UNKNOWN")
    head = await pulled.registry.call("HEAD", f"blobs/{UNKNOWN_DIGEST}")
    assert head.status == 404
    assert head.body == b""


async def test_an_unknown_tag_or_digest_is_404_manifest_unknown(pulled: Pulled) -> None:
    for reference in ("no-such-tag", UNKNOWN_DIGEST):
        answer = await pulled.registry.call("GET", f"manifests/{reference}")
        answer.assert_error(404, "MANIFEST_UNKNOWN")
        assert (await pulled.registry.call("HEAD", f"manifests/{reference}")).status == 404


async def test_an_invalid_tag_names_no_manifest_so_is_404_manifest_unknown(
    pulled: Pulled,
) -> None:
    answer = await pulled.registry.call("GET", f"manifests/{INVALID_TAG}")
    answer.assert_error(404, "MANIFEST_UNKNOWN")
    head = await pulled.registry.call("HEAD", f"manifests/{INVALID_TAG}")
    assert head.status == 404
    assert head.body == b""


async def test_a_malformed_digest_reference_is_400_digest_invalid(pulled: Pulled) -> None:
    # The suite accepts 400 or 404 here, a 400 with the spec's error JSON.
    answer = await pulled.registry.call("GET", "manifests/sha256:totallywrong")
    answer.assert_error(400, "DIGEST_INVALID")


async def test_content_is_unknown_under_a_repository_that_lacks_it(pulled: Pulled) -> None:
    other = "oci/conformance-other"
    manifest = await pulled.registry.call("GET", f"/v2/{other}/manifests/{pulled.tagged.digest}")
    manifest.assert_error(404, "MANIFEST_UNKNOWN")
    blob = await pulled.registry.call("GET", f"/v2/{other}/blobs/{digest_of(pulled.tagged.layer)}")
    blob.assert_error(404, "BLOB_UNKNOWN")


async def test_an_unknown_repository_is_404_name_unknown_for_its_tags(pulled: Pulled) -> None:
    answer = await pulled.registry.call("GET", "/v2/no/such-repository/tags/list")
    answer.assert_error(404, "NAME_UNKNOWN")


async def test_the_tags_list_names_the_repository_and_its_tags(pulled: Pulled) -> None:
    answer = await pulled.registry.call("GET", "tags/list")
    assert answer.status == 200, answer.describe()
    assert answer.json() == {"name": REPO, "tags": [TAG]}


async def test_referrers_are_an_image_index_of_the_manifests_naming_the_subject(
    pulled: Pulled,
) -> None:
    answer = await pulled.registry.call("GET", f"referrers/{pulled.tagged.digest}")
    assert answer.status == 200, answer.describe()
    assert answer.headers["Content-Type"] == oci.OCI_INDEX
    index = answer.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == oci.OCI_INDEX
    listed = {entry["digest"]: entry for entry in index["manifests"]}
    assert set(listed) == {digest_of(body) for body in pulled.referrers.values()}
    for artifact_type, body in pulled.referrers.items():
        entry = listed[digest_of(body)]
        assert entry["artifactType"] == artifact_type
        assert entry["mediaType"] == oci.OCI_MANIFEST
        assert entry["size"] == len(body)


async def test_referrers_filtered_by_artifact_type_say_so(pulled: Pulled) -> None:
    answer = await pulled.registry.call(
        "GET", f"referrers/{pulled.tagged.digest}", params={"artifactType": SBOM}
    )
    assert answer.status == 200, answer.describe()
    assert answer.headers["OCI-Filters-Applied"] == "artifactType"
    assert [entry["digest"] for entry in answer.json()["manifests"]] == [
        digest_of(pulled.referrers[SBOM])
    ]


async def test_referrers_of_a_manifest_without_any_are_an_empty_index(pulled: Pulled) -> None:
    for subject in (pulled.by_digest.digest, UNKNOWN_DIGEST):
        answer = await pulled.registry.call("GET", f"referrers/{subject}")
        assert answer.status == 200, answer.describe()
        assert answer.headers["Content-Type"] == oci.OCI_INDEX
        assert answer.json()["manifests"] == []


@pytest.mark.parametrize("pulled", ["agent"], indirect=True)
async def test_the_agent_refuses_pushes_with_405_unsupported(pulled: Pulled) -> None:
    answer = await pulled.registry.call("POST", "blobs/uploads/")
    answer.assert_error(405, "UNSUPPORTED")
    put = await pulled.registry.put_manifest("pushed", pulled.tagged.manifest)
    put.assert_error(405, "UNSUPPORTED")
