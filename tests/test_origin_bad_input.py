"""Bad input gets the spec's error and never leaves a partial or unverified blob."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from yarl import URL

from krill import oci
from krill.blobstore import BlobStore
from krill.digests import Digest
from krill.origin.appkeys import STORE, TAG_HISTORY, TAG_MOVED, UPLOADS
from tests.fixtures_origin import digest_of, error_code
from tests.imagebuild import build_image, random_files
from tests.polling import until


async def error_of(resp: ClientResponse) -> tuple[int, str]:
    return resp.status, await error_code(resp)


def store_is_empty(origin_client: TestClient) -> bool:
    store: BlobStore = origin_client.app[STORE]
    return list(store.digests()) == [] and list((store.root / "incoming").iterdir()) == []


async def test_wrong_digest_is_rejected_and_nothing_stored(origin_client: TestClient) -> None:
    resp = await origin_client.post(
        f"/v2/team/app/blobs/uploads/?digest={digest_of(b'other')}", data=b"data"
    )
    assert await error_of(resp) == (400, "DIGEST_INVALID")
    start = await origin_client.post("/v2/team/app/blobs/uploads/")
    location = start.headers["Location"]
    await origin_client.patch(location, data=b"first half")
    resp = await origin_client.put(
        f"{location}?digest={digest_of(b'something else')}", data=b" second"
    )
    assert await error_of(resp) == (400, "DIGEST_INVALID")
    assert store_is_empty(origin_client)
    assert (await origin_client.get(location)).status == 404  # the failed session is gone


async def test_upload_missing_its_end_is_rejected(origin_client: TestClient) -> None:
    data = b"0123456789" * 100
    start = await origin_client.post("/v2/team/app/blobs/uploads/")
    location = start.headers["Location"]
    await origin_client.patch(location, data=data[:600])
    resp = await origin_client.put(f"{location}?digest={digest_of(data)}")
    assert await error_of(resp) == (400, "DIGEST_INVALID")
    assert store_is_empty(origin_client)


async def test_body_cut_off_mid_request_leaves_nothing(origin_client: TestClient) -> None:
    data = b"x" * 100_000
    _reader, writer = await asyncio.open_connection("127.0.0.1", origin_client.port)
    writer.write(
        f"POST /v2/team/app/blobs/uploads/?digest={digest_of(data)} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data[:40_000]
    )
    await writer.drain()
    incoming = origin_client.app[STORE].root / "incoming"
    await until(lambda: any(incoming.iterdir()), "the origin to start writing the upload")
    writer.close()
    await writer.wait_closed()
    await until(lambda: store_is_empty(origin_client), "the cut-off upload to be discarded")
    assert (await origin_client.get(f"/v2/team/app/blobs/{digest_of(data)}")).status == 404


@pytest.mark.parametrize(
    "digest",
    ["sha256:xyz", "sha256:" + "A" * 64, "md5:d41d8cd98f00b204e9800998ecf8427e", "nodigest:"],
)
async def test_malformed_digest(origin_client: TestClient, digest: str) -> None:
    resp = await origin_client.get(URL(f"/v2/team/app/blobs/{digest}", encoded=False))
    assert await error_of(resp) == (400, "DIGEST_INVALID")
    resp = await origin_client.post(
        "/v2/team/app/blobs/uploads/", params={"digest": digest}, data=b"x"
    )
    assert await error_of(resp) == (400, "DIGEST_INVALID")
    assert store_is_empty(origin_client)


async def raw_request(port: int, method: str, path: str) -> tuple[int, dict]:
    """Send ``path`` exactly as written (HTTP clients would normalize ``..`` away)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\n"
        "Connection: close\r\n\r\nx".encode()
    )
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(
    "raw_name",
    [
        "team/../app",
        "team/%2e%2e/app",
        "%2e%2e/%2e%2e/etc",
        "Team/App",
        "team/" + "a" * 260,
        "team//app",
        "_private/app",
    ],
)
async def test_invalid_names_are_refused(origin_client: TestClient, raw_name: str) -> None:
    digest = digest_of(b"x")
    for method, path in (
        ("GET", f"/v2/{raw_name}/blobs/{digest}"),
        ("GET", f"/v2/{raw_name}/manifests/latest"),
        ("POST", f"/v2/{raw_name}/blobs/uploads/?digest={digest}"),
        ("PUT", f"/v2/{raw_name}/manifests/latest"),
        ("GET", f"/v2/{raw_name}/tags/list"),
    ):
        status, body = await raw_request(origin_client.port, method, path)
        assert (status, body["errors"][0]["code"]) == (400, "NAME_INVALID"), (method, path)
    assert store_is_empty(origin_client)
    assert not (origin_client.app[STORE].root / "repositories").exists() or not any(
        (origin_client.app[STORE].root / "repositories").iterdir()
    )


async def test_range_past_the_end_is_416(origin_client: TestClient) -> None:
    data = b"short blob"
    await origin_client.post(f"/v2/team/app/blobs/uploads/?digest={digest_of(data)}", data=data)
    resp = await origin_client.get(
        f"/v2/team/app/blobs/{digest_of(data)}", headers={"Range": "bytes=100-"}
    )
    assert resp.status == 416


async def test_manifest_over_the_limit_is_413(origin_client: TestClient) -> None:
    body = json.dumps(
        {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "pad": "x" * (4 * 1024 * 1024)}
    ).encode()
    resp = await origin_client.put(
        "/v2/team/app/manifests/big", data=body, headers={"Content-Type": oci.OCI_MANIFEST}
    )
    assert await error_of(resp) == (413, "SIZE_INVALID")


async def test_manifest_that_is_not_json(origin_client: TestClient) -> None:
    resp = await origin_client.put(
        "/v2/team/app/manifests/v1", data=b"{not json", headers={"Content-Type": oci.OCI_MANIFEST}
    )
    assert await error_of(resp) == (400, "MANIFEST_INVALID")
    resp = await origin_client.put(
        "/v2/team/app/manifests/v1", data=b"[1, 2]", headers={"Content-Type": oci.OCI_MANIFEST}
    )
    assert await error_of(resp) == (400, "MANIFEST_INVALID")


async def test_index_whose_platform_is_not_an_object(origin_client: TestClient) -> None:
    image = build_image([random_files(1, 1, 256)])
    for blob in image.blobs():
        await origin_client.post(
            f"/v2/team/app/blobs/uploads/?digest={blob.digest}", data=blob.data
        )
    headers = {"Content-Type": oci.OCI_MANIFEST}
    await origin_client.put(
        f"/v2/team/app/manifests/{image.manifest.digest}", data=image.manifest.data, headers=headers
    )
    entry = {
        "mediaType": oci.OCI_MANIFEST,
        "digest": image.manifest.digest,
        "size": len(image.manifest.data),
        "platform": "linux",
    }
    index = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [entry]})
    resp = await origin_client.put(
        "/v2/team/app/manifests/multi", data=index, headers={"Content-Type": oci.OCI_INDEX}
    )
    assert await error_of(resp) == (400, "MANIFEST_INVALID")
    assert "platform" in (await resp.json())["errors"][0]["message"]


async def test_manifest_naming_unknown_blobs(origin_client: TestClient) -> None:
    image = build_image([random_files(1, 1, 256)])
    await origin_client.post(
        f"/v2/team/app/blobs/uploads/?digest={image.config.digest}", data=image.config.data
    )
    resp = await origin_client.put(
        "/v2/team/app/manifests/v1",
        data=image.manifest.data,
        headers={"Content-Type": oci.OCI_MANIFEST},
    )
    assert await error_of(resp) == (400, "MANIFEST_BLOB_UNKNOWN")
    missing = (await resp.json())["errors"][0]["detail"]["missing"]
    assert missing == [image.layers[0].digest]
    assert (await origin_client.get("/v2/team/app/manifests/v1")).status == 404


async def test_a_missing_blob_named_many_times_is_named_once(origin_client: TestClient) -> None:
    image = build_image([random_files(1, 1, 256)])
    await origin_client.post(
        f"/v2/team/app/blobs/uploads/?digest={image.config.digest}", data=image.config.data
    )
    manifest = json.loads(image.manifest.data)
    manifest["layers"] = manifest["layers"] * 50
    resp = await origin_client.put(
        "/v2/team/app/manifests/v1", data=json.dumps(manifest),
        headers={"Content-Type": oci.OCI_MANIFEST},
    )
    assert await error_of(resp) == (400, "MANIFEST_BLOB_UNKNOWN")
    assert (await resp.json())["errors"][0]["detail"]["missing"] == [image.layers[0].digest]


async def test_manifest_whose_bytes_do_not_match_the_digest_in_the_url(
    origin_client: TestClient,
) -> None:
    image = build_image([random_files(1, 1, 256)])
    for blob in image.blobs():
        await origin_client.post(
            f"/v2/team/app/blobs/uploads/?digest={blob.digest}", data=blob.data
        )
    resp = await origin_client.put(
        f"/v2/team/app/manifests/{digest_of(b'other')}",
        data=image.manifest.data,
        headers={"Content-Type": oci.OCI_MANIFEST},
    )
    assert await error_of(resp) == (400, "DIGEST_INVALID")


async def test_unknown_upload_and_bad_page_size(origin_client: TestClient) -> None:
    resp = await origin_client.patch("/v2/team/app/blobs/uploads/no-such-upload", data=b"x")
    assert await error_of(resp) == (404, "BLOB_UPLOAD_UNKNOWN")
    resp = await origin_client.get("/v2/_catalog?n=-1")
    assert resp.status == 400


async def test_chunk_whose_length_contradicts_its_content_range(origin_client: TestClient) -> None:
    start = await origin_client.post("/v2/team/app/blobs/uploads/")
    location = start.headers["Location"]
    resp = await origin_client.patch(location, data=b"12345", headers={"Content-Range": "0-9"})
    assert await error_of(resp) == (400, "BLOB_UPLOAD_INVALID")
    resp = await origin_client.patch(
        location, data=b"12345", headers={"Content-Range": "bytes=a-b"}
    )
    assert await error_of(resp) == (400, "BLOB_UPLOAD_INVALID")
    status = await origin_client.get(location)  # refused before any byte was taken: still at 0
    assert (status.status, status.headers["Range"]) == (204, "0-0")
    assert list(origin_client.app[STORE].digests()) == []


async def test_chunked_body_shorter_than_its_content_range(origin_client: TestClient) -> None:
    """A chunked body has no Content-Length to check before it is read; once read, a
    length other than the range's ends the session (the OCI conformance review)."""

    async def ten_bytes() -> AsyncIterator[bytes]:
        yield b"0123456789"

    start = await origin_client.post("/v2/team/app/blobs/uploads/")
    location = start.headers["Location"]
    resp = await origin_client.patch(location, data=ten_bytes(), headers={"Content-Range": "0-21"})
    assert await error_of(resp) == (400, "BLOB_UPLOAD_INVALID")
    gone = await origin_client.get(location)
    assert await error_of(gone) == (404, "BLOB_UPLOAD_UNKNOWN")


async def test_an_upload_body_that_stops_is_refused_and_let_go(
    origin_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pusher that sends part of a body and then nothing held its connection and file
    forever (security review: 10,000 of them took every descriptor). Now 408 after the
    idle time (60 s as shipped; a fraction of a second here), and nothing is stored."""
    monkeypatch.setattr("krill.origin.upload_routes.BODY_IDLE_TIMEOUT", 0.2)
    stalled = asyncio.Event()

    async def part_then_nothing() -> AsyncIterator[bytes]:
        yield b"first bytes"
        await stalled.wait()  # never set: the body stops here
        yield b""

    digest = digest_of(b"first bytes and more")
    resp = await origin_client.post(
        f"/v2/team/app/blobs/uploads/?digest={digest}", data=part_then_nothing()
    )
    assert await error_of(resp) == (408, "BLOB_UPLOAD_INVALID")
    assert store_is_empty(origin_client)


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
async def test_an_invalid_tag_names_no_manifest(origin_client: TestClient, method: str) -> None:
    """404 MANIFEST_UNKNOWN, as the OCI conformance suite asks for ``.INVALID_MANIFEST_NAME``;
    a push to it stays 400 MANIFEST_INVALID."""
    resp = await origin_client.request(method, "/v2/team/app/manifests/.INVALID_MANIFEST_NAME")
    assert resp.status == 404
    if method != "HEAD":
        assert await error_code(resp) == "MANIFEST_UNKNOWN"


async def test_idle_upload_sessions_expire(origin_client: TestClient) -> None:
    start = await origin_client.post("/v2/team/app/blobs/uploads/")
    location = start.headers["Location"]
    await origin_client.patch(location, data=b"abandoned")
    assert origin_client.app[UPLOADS].expire(idle_seconds=0) == 1
    assert await error_of(await origin_client.get(location)) == (404, "BLOB_UPLOAD_UNKNOWN")
    assert store_is_empty(origin_client)


async def test_a_failing_tag_hook_does_not_fail_the_push(origin_client: TestClient) -> None:
    async def broken(repo: str, tag: str, old: Digest | None, new: Digest) -> None:
        raise RuntimeError("hook bug")

    origin_client.app[TAG_MOVED].append(broken)
    image = build_image([random_files(3, 1, 256)])
    for blob in image.blobs():
        await origin_client.post(
            f"/v2/team/app/blobs/uploads/?digest={blob.digest}", data=blob.data
        )
    resp = await origin_client.put(
        "/v2/team/app/manifests/v1",
        data=image.manifest.data,
        headers={"Content-Type": oci.OCI_MANIFEST},
    )
    assert resp.status == 201
    assert [e.new for e in origin_client.app[TAG_HISTORY].history("team/app")] == [
        Digest.parse(image.manifest.digest)
    ]


async def test_unknown_paths_and_crashes_get_json_errors(
    origin_client: TestClient, aiohttp_client: AiohttpClient
) -> None:
    from aiohttp import web

    from krill.registry_errors import error_middleware

    assert await error_of(await origin_client.get("/no/such/path")) == (404, "UNSUPPORTED")
    assert await error_of(await origin_client.get("/v2/team/app/tags/list")) == (
        404,
        "NAME_UNKNOWN",
    )

    async def crash(request: web.Request) -> web.Response:
        raise KeyError("a bug")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/v2/crash", crash)
    crashing = await aiohttp_client(app)
    resp = await crashing.get("/v2/crash")
    assert resp.headers["Content-Type"].startswith("application/json")
    assert await error_of(resp) == (500, "UNKNOWN")
