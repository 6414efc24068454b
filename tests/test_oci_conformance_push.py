"""OCI conformance, pushing blobs to the origin: every upload flow, and cross-repository mounts.

Each test runs twice: request bodies with ``Content-Length`` and chunked. Where
Krill differs from the spec on purpose (docs/architecture.md, "OCI Distribution
conformance"), the test asserts Krill's documented answer.
"""

from __future__ import annotations

import os
import uuid

from tests.fixtures_origin import digest_of
from tests.oci_conformance import REPO, UNKNOWN_DIGEST, Registry

OTHER_REPO = "oci/conformance-mount"
OCTETS = {"Content-Type": "application/octet-stream"}


async def blob_is_served(registry: Registry, data: bytes, repo: str = REPO) -> None:
    answer = await registry.call("GET", f"/v2/{repo}/blobs/{digest_of(data)}")
    assert answer.status == 200, answer.describe()
    assert answer.body == data
    assert answer.headers["Docker-Content-Digest"] == digest_of(data)


async def closing_put_stores(registry: Registry, location: str, data: bytes) -> None:
    """A PUT of ``data``'s digest (no body) closes the upload at ``location``: 201, blob stored."""
    done = await registry.call("PUT", location, params={"digest": digest_of(data)}, headers=OCTETS)
    assert done.status == 201, done.describe()
    assert done.location == f"/v2/{REPO}/blobs/{digest_of(data)}"
    await blob_is_served(registry, data)


async def test_a_patch_then_a_put_with_the_digest_completes_a_streamed_upload(
    origin_registry: Registry,
) -> None:
    data = os.urandom(42)
    started = await origin_registry.call("POST", "blobs/uploads/")
    assert started.status == 202
    assert started.location.startswith(f"/v2/{REPO}/blobs/uploads/")
    patched = await origin_registry.call("PATCH", started.location, body=data, headers=OCTETS)
    assert patched.status == 202, patched.describe()
    assert patched.headers["Range"] == f"0-{len(data) - 1}"
    await closing_put_stores(origin_registry, patched.location, data)


async def test_a_post_with_the_digest_and_the_blob_stores_it_at_once(
    origin_registry: Registry,
) -> None:
    data = os.urandom(42)
    answer = await origin_registry.call(
        "POST", "blobs/uploads/", body=data, params={"digest": digest_of(data)}, headers=OCTETS
    )
    assert answer.status == 201, answer.describe()
    assert answer.location == f"/v2/{REPO}/blobs/{digest_of(data)}"
    assert answer.headers["Docker-Content-Digest"] == digest_of(data)
    await blob_is_served(origin_registry, data)


async def test_a_post_opens_a_session_that_a_put_with_the_blob_completes(
    origin_registry: Registry,
) -> None:
    data = os.urandom(42)
    assert (await origin_registry.call("GET", f"blobs/{digest_of(data)}")).status == 404
    started = await origin_registry.call("POST", "blobs/uploads/")
    assert started.status == 202
    done = await origin_registry.call(
        "PUT", started.location, body=data, params={"digest": digest_of(data)}, headers=OCTETS
    )
    assert done.status == 201, done.describe()
    assert done.location == f"/v2/{REPO}/blobs/{digest_of(data)}"
    assert done.headers["Docker-Content-Digest"] == digest_of(data)
    await blob_is_served(origin_registry, data)


async def test_chunks_sent_in_order_with_content_range_make_the_blob(
    origin_registry: Registry,
) -> None:
    data = os.urandom(42)
    first, second = data[:22], data[22:]
    started = await origin_registry.call("POST", "blobs/uploads/")
    patched = await origin_registry.call(
        "PATCH", started.location, body=first, headers={**OCTETS, "Content-Range": "0-21"}
    )
    assert patched.status == 202, patched.describe()
    assert patched.headers["Range"] == "0-21"
    status = await origin_registry.call("GET", patched.location)
    assert status.status == 204
    assert status.headers["Range"] == "0-21"
    assert status.location.startswith(f"/v2/{REPO}/blobs/uploads/")
    patched = await origin_registry.call(
        "PATCH", status.location, body=second, headers={**OCTETS, "Content-Range": "22-41"}
    )
    assert patched.status == 202, patched.describe()
    assert patched.headers["Range"] == "0-41"
    await closing_put_stores(origin_registry, patched.location, data)


async def test_a_closing_put_may_carry_the_last_chunk(origin_registry: Registry) -> None:
    data = os.urandom(100)
    started = await origin_registry.call("POST", "blobs/uploads/")
    patched = await origin_registry.call(
        "PATCH", started.location, body=data[:50], headers={**OCTETS, "Content-Range": "0-49"}
    )
    assert patched.headers["Range"] == "0-49"
    done = await origin_registry.call(
        "PUT",
        patched.location,
        body=data[50:],
        params={"digest": digest_of(data)},
        headers={**OCTETS, "Content-Range": "50-99"},
    )
    assert done.status == 201, done.describe()
    assert done.headers["Docker-Content-Digest"] == digest_of(data)
    await blob_is_served(origin_registry, data)


async def test_a_first_chunk_that_does_not_start_at_zero_is_416_range_invalid(
    origin_registry: Registry,
) -> None:
    # RANGE_INVALID is Krill's code (and CNCF distribution's), not in the spec's table.
    started = await origin_registry.call("POST", "blobs/uploads/")
    answer = await origin_registry.call(
        "PATCH", started.location, body=os.urandom(20), headers={**OCTETS, "Content-Range": "22-41"}
    )
    answer.assert_error(416, "RANGE_INVALID")


async def test_a_chunk_sent_again_is_416_and_the_session_keeps_its_bytes(
    origin_registry: Registry,
) -> None:
    data = os.urandom(64)
    started = await origin_registry.call("POST", "blobs/uploads/")
    chunk = {**OCTETS, "Content-Range": "0-63"}
    await origin_registry.call("PATCH", started.location, body=data, headers=chunk)
    again = await origin_registry.call("PATCH", started.location, body=data, headers=chunk)
    again.assert_error(416, "RANGE_INVALID")
    assert again.headers["Range"] == "0-63"  # where to resume
    assert again.location.startswith(f"/v2/{REPO}/blobs/uploads/")
    status = await origin_registry.call("GET", started.location)
    assert status.status == 204
    assert status.headers["Range"] == "0-63"
    done = await origin_registry.call(
        "PUT", started.location, params={"digest": digest_of(data)}, headers=OCTETS
    )
    assert done.status == 201, done.describe()
    await blob_is_served(origin_registry, data)


async def test_a_put_whose_bytes_do_not_match_the_digest_is_400_digest_invalid(
    origin_registry: Registry,
) -> None:
    started = await origin_registry.call("POST", "blobs/uploads/")
    answer = await origin_registry.call(
        "PUT", started.location, body=b"not-the-content", params={"digest": UNKNOWN_DIGEST}
    )
    answer.assert_error(400, "DIGEST_INVALID")
    assert (
        await origin_registry.call("GET", f"blobs/{digest_of(b'not-the-content')}")
    ).status == 404


async def test_an_unknown_upload_session_is_404_blob_upload_unknown(
    origin_registry: Registry,
) -> None:
    session = f"blobs/uploads/{uuid.uuid4()}"
    put = await origin_registry.call("PUT", session, body=b"x", params={"digest": digest_of(b"x")})
    put.assert_error(404, "BLOB_UPLOAD_UNKNOWN")
    (await origin_registry.call("GET", session)).assert_error(404, "BLOB_UPLOAD_UNKNOWN")
    patch = await origin_registry.call("PATCH", session, body=b"x", headers=OCTETS)
    patch.assert_error(404, "BLOB_UPLOAD_UNKNOWN")


async def test_a_cancelled_upload_session_is_204_then_unknown(origin_registry: Registry) -> None:
    started = await origin_registry.call("POST", "blobs/uploads/")
    assert (await origin_registry.call("DELETE", started.location)).status == 204
    (await origin_registry.call("GET", started.location)).assert_error(404, "BLOB_UPLOAD_UNKNOWN")


async def test_an_upload_post_needs_the_trailing_slash(origin_registry: Registry) -> None:
    # Krill routes POST /v2/<name>/blobs/uploads/ only, as the spec writes it.
    answer = await origin_registry.call("POST", "blobs/uploads")
    answer.assert_error(405, "UNSUPPORTED")


async def test_mounting_a_blob_from_a_repository_holding_it_links_it_at_once(
    origin_registry: Registry,
) -> None:
    digest = await origin_registry.upload(data := os.urandom(42))
    answer = await origin_registry.call(
        "POST", f"/v2/{OTHER_REPO}/blobs/uploads/", params={"mount": digest, "from": REPO}
    )
    assert answer.status == 201, answer.describe()
    assert answer.location == f"/v2/{OTHER_REPO}/blobs/{digest}"
    assert answer.headers["Docker-Content-Digest"] == digest
    await blob_is_served(origin_registry, data, repo=OTHER_REPO)


async def test_a_mount_without_from_opens_an_upload_session(origin_registry: Registry) -> None:
    answer = await origin_registry.call(
        "POST", f"/v2/{OTHER_REPO}/blobs/uploads/", params={"mount": UNKNOWN_DIGEST}
    )
    assert answer.status == 202, answer.describe()
    assert answer.location.startswith(f"/v2/{OTHER_REPO}/blobs/uploads/")


async def test_a_mount_from_a_repository_lacking_the_blob_opens_an_upload_session(
    origin_registry: Registry,
) -> None:
    answer = await origin_registry.call(
        "POST",
        f"/v2/{OTHER_REPO}/blobs/uploads/",
        params={"mount": UNKNOWN_DIGEST, "from": REPO},
    )
    assert answer.status == 202, answer.describe()
    assert answer.location.startswith(f"/v2/{OTHER_REPO}/blobs/uploads/")
    data = os.urandom(42)
    done = await origin_registry.call(
        "PUT", answer.location, body=data, params={"digest": digest_of(data)}, headers=OCTETS
    )
    assert done.status == 201, done.describe()
    await blob_is_served(origin_registry, data, repo=OTHER_REPO)


async def test_a_blob_pushed_to_one_repository_is_unknown_in_another(
    origin_registry: Registry,
) -> None:
    digest = await origin_registry.upload(os.urandom(42))
    answer = await origin_registry.call("GET", f"/v2/{OTHER_REPO}/blobs/{digest}")
    answer.assert_error(404, "BLOB_UNKNOWN")
