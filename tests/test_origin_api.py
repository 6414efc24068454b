"""The origin's Distribution API, exercised with a plain aiohttp client on loopback."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient

from krill import oci
from krill.digests import Digest
from krill.origin.appkeys import STORE
from tests.fixtures_origin import digest_of, error_code
from tests.imagebuild import Image, build_image, random_files


async def push_blob(origin_client: TestClient, repo: str, data: bytes) -> str:
    resp = await origin_client.post(
        f"/v2/{repo}/blobs/uploads/?digest={digest_of(data)}", data=data
    )
    assert resp.status == 201, await resp.text()
    return digest_of(data)


async def push_image(origin_client: TestClient, repo: str, tag: str, image: Image) -> None:
    for blob in image.blobs():
        await push_blob(origin_client, repo, blob.data)
    resp = await origin_client.put(
        f"/v2/{repo}/manifests/{tag}",
        data=image.manifest.data,
        headers={"Content-Type": image.manifest.media_type},
    )
    assert resp.status == 201, await resp.text()


async def test_base_check(origin_client: TestClient) -> None:
    resp = await origin_client.get("/v2/")
    assert resp.status == 200
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_an_unknown_path_says_where_the_endpoints_are(origin_client: TestClient) -> None:
    resp = await origin_client.get("/v3/")
    assert resp.status == 404
    assert "the registry API lives under /v2/" in (await resp.json())["errors"][0]["message"]
    resp = await origin_client.get(f"/krill/v1/metainfo/sha256:{'0' * 64}")  # not seeding
    assert resp.status == 404
    assert "started with --tracker" in (await resp.json())["errors"][0]["message"]


async def test_chunked_upload_with_content_range(origin_client: TestClient) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes in three chunks
    chunks = [data[:4000], data[4000:8000], data[8000:]]
    resp = await origin_client.post("/v2/team/app/blobs/uploads/")
    assert resp.status == 202
    assert resp.headers["Range"] == "0-0"
    location = resp.headers["Location"]
    offset = 0
    for chunk in chunks[:2]:
        end = offset + len(chunk) - 1
        resp = await origin_client.patch(
            location, data=chunk, headers={"Content-Range": f"{offset}-{end}"}
        )
        assert resp.status == 202, await resp.text()
        assert resp.headers["Range"] == f"0-{end}"
        offset = end + 1
        location = resp.headers["Location"]
    status = await origin_client.get(location)
    assert status.status == 204
    assert status.headers["Range"] == "0-7999"
    # a chunk that does not continue where the upload stands is refused, the upload survives
    resp = await origin_client.patch(location, data=b"xx", headers={"Content-Range": "100-101"})
    assert resp.status == 416
    assert resp.headers["Range"] == "0-7999"
    resp = await origin_client.put(
        f"{location}?digest={digest_of(data)}",
        data=chunks[2],
        headers={"Content-Range": f"8000-{len(data) - 1}"},
    )
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest_of(data)
    assert resp.headers["Location"] == f"/v2/team/app/blobs/{digest_of(data)}"
    resp = await origin_client.get(f"/v2/team/app/blobs/{digest_of(data)}")
    assert await resp.read() == data
    assert (await origin_client.get(location)).status == 404


async def test_post_then_put_monolithic(origin_client: TestClient) -> None:
    data = b"monolithic blob"
    resp = await origin_client.post("/v2/team/app/blobs/uploads/")
    resp = await origin_client.put(
        f"{resp.headers['Location']}?digest={digest_of(data)}", data=data
    )
    assert resp.status == 201
    assert origin_client.app[STORE].read_bytes(Digest.parse(digest_of(data))) == data


async def test_blob_get_head_and_ranges(origin_client: TestClient) -> None:
    data = bytes(range(256)) * 8
    digest = await push_blob(origin_client, "team/app", data)
    url = f"/v2/team/app/blobs/{digest}"
    resp = await origin_client.get(url)
    assert resp.status == 200
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert await resp.read() == data
    head = await origin_client.head(url)
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["Docker-Content-Digest"] == digest
    assert await head.read() == b""
    part = await origin_client.get(url, headers={"Range": "bytes=10-19"})
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert await part.read() == data[10:20]
    tail = await origin_client.get(url, headers={"Range": "bytes=2000-"})
    assert await tail.read() == data[2000:]
    past = await origin_client.get(url, headers={"Range": f"bytes={len(data)}-{len(data) + 10}"})
    assert past.status == 416
    assert past.headers["Content-Range"] == f"bytes */{len(data)}"


async def test_cross_repository_mount(origin_client: TestClient) -> None:
    data = b"shared base layer"
    digest = await push_blob(origin_client, "team/one", data)
    resp = await origin_client.get(f"/v2/team/two/blobs/{digest}")
    assert resp.status == 404
    assert await error_code(resp) == "BLOB_UNKNOWN"
    resp = await origin_client.post(f"/v2/team/two/blobs/uploads/?mount={digest}&from=team/one")
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await (await origin_client.get(f"/v2/team/two/blobs/{digest}")).read() == data
    # from a repository without the blob, a mount falls back to a new upload session
    resp = await origin_client.post(f"/v2/team/three/blobs/uploads/?mount={digest}&from=team/none")
    assert resp.status == 202
    assert "/v2/team/three/blobs/uploads/" in resp.headers["Location"]


async def test_manifest_get_head_accept_and_delete(origin_client: TestClient) -> None:
    image = build_image([random_files(1, 1, 512)])
    await push_image(origin_client, "team/app", "v1", image)
    resp = await origin_client.get(
        "/v2/team/app/manifests/v1", headers={"Accept": ", ".join(oci.MANIFEST_TYPES)}
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"] == oci.OCI_MANIFEST
    assert resp.headers["Docker-Content-Digest"] == image.manifest.digest
    assert await resp.read() == image.manifest.data
    by_digest = await origin_client.get(f"/v2/team/app/manifests/{image.manifest.digest}")
    assert await by_digest.read() == image.manifest.data
    head = await origin_client.head("/v2/team/app/manifests/v1")
    assert head.headers["Content-Length"] == str(len(image.manifest.data))
    assert await head.read() == b""
    # a client that accepts only Docker manifests is told the stored type, never converted
    refused = await origin_client.get(
        "/v2/team/app/manifests/v1", headers={"Accept": oci.DOCKER_MANIFEST}
    )
    assert refused.status == 404
    assert oci.OCI_MANIFEST in (await refused.json())["errors"][0]["message"]
    assert (
        await origin_client.get("/v2/team/app/manifests/v1", headers={"Accept": "*/*"})
    ).status == 200
    # delete by tag removes the tag; delete by digest removes the manifest
    assert (await origin_client.delete("/v2/team/app/manifests/v1")).status == 202
    assert (await origin_client.get("/v2/team/app/manifests/v1")).status == 404
    assert (
        await origin_client.delete(f"/v2/team/app/manifests/{image.manifest.digest}")
    ).status == 202
    gone = await origin_client.get(f"/v2/team/app/manifests/{image.manifest.digest}")
    assert gone.status == 404
    assert await error_code(gone) == "MANIFEST_UNKNOWN"


async def test_tags_list_pagination(origin_client: TestClient) -> None:
    image = build_image([random_files(2, 1, 256)])
    for tag in ("v3", "v1", "v5", "v2", "v4"):
        await push_image(origin_client, "team/app", tag, image)
    resp = await origin_client.get("/v2/team/app/tags/list")
    assert await resp.json() == {"name": "team/app", "tags": ["v1", "v2", "v3", "v4", "v5"]}
    seen: list[str] = []
    url = "/v2/team/app/tags/list?n=2"
    pages = 0
    while url:
        resp = await origin_client.get(url)
        body = await resp.json()
        assert len(body["tags"]) <= 2
        seen += body["tags"]
        pages += 1
        link = resp.headers.get("Link")
        url = link.split(";")[0].strip("<>") if link else ""
    assert seen == ["v1", "v2", "v3", "v4", "v5"]
    assert pages == 3
    after = await origin_client.get("/v2/team/app/tags/list?last=v3")
    assert (await after.json())["tags"] == ["v4", "v5"]
    unknown = await origin_client.get("/v2/team/nothing/tags/list")
    assert unknown.status == 404
    assert await error_code(unknown) == "NAME_UNKNOWN"


async def test_catalog_pagination(origin_client: TestClient) -> None:
    for repo in ("b/two", "a/one", "c", "a/one/sub"):
        await push_blob(origin_client, repo, repo.encode())
    resp = await origin_client.get("/v2/_catalog")
    assert await resp.json() == {"repositories": ["a/one", "a/one/sub", "b/two", "c"]}
    first = await origin_client.get("/v2/_catalog?n=2")
    assert (await first.json())["repositories"] == ["a/one", "a/one/sub"]
    assert first.headers["Link"] == '</v2/_catalog?n=2&last=a%2Fone%2Fsub>; rel="next"'
    second = await origin_client.get("/v2/_catalog?n=2&last=a/one/sub")
    assert (await second.json())["repositories"] == ["b/two", "c"]
    assert "Link" not in second.headers


async def test_upload_cancel_forgets_the_session(origin_client: TestClient) -> None:
    resp = await origin_client.post("/v2/team/app/blobs/uploads/")
    location = resp.headers["Location"]
    await origin_client.patch(location, data=b"some bytes")
    assert (await origin_client.delete(location)).status == 204
    resp = await origin_client.patch(location, data=b"more")
    assert resp.status == 404
    assert await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"
    assert list((origin_client.app[STORE].root / "incoming").iterdir()) == []


async def test_health_and_metrics(origin_client: TestClient) -> None:
    data = b"counted bytes"
    digest = await push_blob(origin_client, "team/app", data)
    await (await origin_client.get(f"/v2/team/app/blobs/{digest}")).read()
    health = await origin_client.get("/health")
    assert health.status == 200
    assert (await health.json())["status"] == "ok"
    text = await (await origin_client.get("/metrics")).text()
    assert f"krill_origin_bytes_served_total {float(len(data))}" in text
    assert 'krill_origin_requests_total{method="GET",route="blob",status="200"} 1.0' in text


async def test_large_blob_downloads_survive_a_client_that_hangs_up(
    origin_client: TestClient,
) -> None:
    data = random_files(9, count=1, size=8 << 20)["data/blob000.bin"]  # fills socket buffers
    digest = await push_blob(origin_client, "team/big", data)
    url = f"/v2/team/big/blobs/{digest}"
    reader, writer = await asyncio.open_connection("127.0.0.1", origin_client.port)
    writer.write(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await reader.read(100_000)
    writer.close()  # hang up mid-body
    bodies = await asyncio.gather(*(fetch_body(origin_client, url) for _ in range(3)))
    assert all(body == data for body in bodies)
    part = await origin_client.get(url, headers={"Range": f"bytes={len(data) - 5_000_000}-"})
    assert await part.read() == data[-5_000_000:]


async def fetch_body(origin_client: TestClient, url: str) -> bytes:
    async with origin_client.get(url) as resp:
        return await resp.read()
