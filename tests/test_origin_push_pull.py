"""skopeo pushes real images into the origin and pulls them back byte-identical."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from krill import oci
from krill.digests import Digest
from krill.origin.appkeys import TAG_HISTORY, TAG_MOVED
from tests.components import SKOPEO_FLAGS, skopeo
from tests.imagebuild import (
    Blob,
    Image,
    build_image,
    build_index,
    random_files,
    read_oci_layout_digests,
    realistic_files,
    write_oci_layout,
)


def host(server: TestServer) -> str:
    return f"127.0.0.1:{server.port}"


async def run_skopeo(*args: str) -> str:
    """skopeo in a thread, so the in-process origin_server keeps serving."""
    return (await asyncio.to_thread(skopeo, *args)).stdout


async def round_trip(
    tmp_path: Path, server: TestServer, top: Blob, images: list[Image], ref: str
) -> None:
    src = write_oci_layout(tmp_path / "src", top, images, "v1")
    dest = f"docker://{host(server)}/{ref}"
    await run_skopeo("copy", "--all", *SKOPEO_FLAGS, f"oci:{src}:v1", dest)
    out = tmp_path / "out"
    await run_skopeo("copy", "--all", *SKOPEO_FLAGS, dest, f"oci:{out}:v1")
    assert read_oci_layout_digests(out) == read_oci_layout_digests(src)
    pulled_index = json.loads((out / "index.json").read_text())
    assert pulled_index["manifests"][0]["digest"] == top.digest


async def test_oci_image_round_trip(tmp_path: Path, origin_server: TestServer) -> None:
    image = build_image([random_files(1, 2, 4096), realistic_files(2, count=8)])
    await round_trip(tmp_path, origin_server, image.manifest, [image], "team/app:v1")
    raw = await run_skopeo(
        "inspect", "--raw", "--tls-verify=false", f"docker://{host(origin_server)}/team/app:v1"
    )
    assert raw.encode() == image.manifest.data or json.loads(raw) == json.loads(image.manifest.data)


def write_dir_layout(root: Path, image: Image) -> Path:
    """skopeo's ``dir:`` transport: copies a Docker schema 2 manifest byte for byte."""
    root.mkdir(parents=True)
    (root / "version").write_text("Directory Transport Version: 1.1\n")
    (root / "manifest.json").write_bytes(image.manifest.data)
    for blob in image.blobs():
        (root / blob.digest.split(":", 1)[1]).write_bytes(blob.data)
    return root


async def test_docker_image_round_trip(tmp_path: Path, origin_server: TestServer) -> None:
    image = build_image([realistic_files(3, count=8)], docker=True)
    src = write_dir_layout(tmp_path / "src", image)
    ref = f"docker://{host(origin_server)}/library/docker-app:v1"
    await run_skopeo("copy", *SKOPEO_FLAGS, f"dir:{src}", ref)
    out = tmp_path / "out"
    await run_skopeo("copy", *SKOPEO_FLAGS, ref, f"dir:{out}")
    assert (out / "manifest.json").read_bytes() == image.manifest.data
    for blob in image.blobs():
        assert (out / blob.digest.split(":", 1)[1]).read_bytes() == blob.data
    async with aiohttp.ClientSession() as client:
        resp = await client.get(f"{base(origin_server)}/v2/library/docker-app/manifests/v1")
        assert resp.headers["Content-Type"] == oci.DOCKER_MANIFEST
        assert resp.headers["Docker-Content-Digest"] == image.manifest.digest
        assert await resp.read() == image.manifest.data


async def test_two_platform_index_round_trip_and_inspect(
    tmp_path: Path, origin_server: TestServer
) -> None:
    images = [
        build_image([random_files(4, 2, 2048)], architecture=arch) for arch in ("amd64", "arm64")
    ]
    index = build_index(images)
    await round_trip(tmp_path, origin_server, index, images, "multi/arch:v1")
    ref = f"docker://{host(origin_server)}/multi/arch:v1"
    info = json.loads(
        await run_skopeo("inspect", "--tls-verify=false", "--override-arch", "arm64", ref)
    )
    assert info["Architecture"] == "arm64"
    assert info["Digest"] == index.digest  # skopeo reports the digest it resolved the tag to
    assert info["RepoTags"] == ["v1"]
    async with aiohttp.ClientSession() as client:
        resp = await client.get(f"{base(origin_server)}/v2/multi/arch/manifests/v1")
        assert resp.headers["Docker-Content-Digest"] == index.digest
        assert await resp.read() == index.data


async def test_tag_history_and_hook_follow_pushes(
    tmp_path: Path, origin_server: TestServer
) -> None:
    app = origin_server.app
    moves: list[tuple[str, str, Digest | None, Digest]] = []

    async def on_moved(repo: str, tag: str, old: Digest | None, new: Digest) -> None:
        moves.append((repo, tag, old, new))

    app[TAG_MOVED].append(on_moved)
    first = build_image([random_files(10, 1, 1024)])
    second = build_image([random_files(11, 1, 1024)])
    for n, image in enumerate((first, second, second)):
        src = write_oci_layout(tmp_path / f"src{n}", image.manifest, [image], "v1")
        await run_skopeo(
            "copy",
            *SKOPEO_FLAGS,
            f"oci:{src}:v1",
            f"docker://{host(origin_server)}/team/svc:latest",
        )
    d1, d2 = Digest.parse(first.manifest.digest), Digest.parse(second.manifest.digest)
    assert moves == [("team/svc", "latest", None, d1), ("team/svc", "latest", d1, d2)]
    history = app[TAG_HISTORY].history("team/svc")
    assert [(e.tag, e.old, e.new) for e in history] == [("latest", None, d1), ("latest", d1, d2)]
    assert app[TAG_HISTORY].previous_manifests("team/svc", 5, exclude=d2) == [d1]


def base(server: TestServer) -> str:
    return f"http://{host(server)}"


async def test_docker_manifest_list_pulls_back_unchanged(
    tmp_path: Path, origin_server: TestServer
) -> None:
    images = [
        build_image([random_files(20, 1, 1024)], docker=True, architecture=arch)
        for arch in ("amd64", "arm64")
    ]
    manifest_list = build_index(images, docker=True)
    async with aiohttp.ClientSession() as client:
        for image in images:
            for blob in image.blobs():
                url = f"{base(origin_server)}/v2/legacy/app/blobs/uploads/?digest={blob.digest}"
                assert (await client.post(url, data=blob.data)).status == 201
            await put_manifest(client, origin_server, image.manifest.digest, image.manifest)
        await put_manifest(client, origin_server, "v1", manifest_list)
        resp = await client.get(f"{base(origin_server)}/v2/legacy/app/manifests/v1")
        assert resp.headers["Content-Type"] == oci.DOCKER_LIST
        assert await resp.read() == manifest_list.data
    out = tmp_path / "out"
    ref = f"docker://{host(origin_server)}/legacy/app:v1"
    await run_skopeo("copy", "--all", *SKOPEO_FLAGS, ref, f"dir:{out}")
    assert (out / "manifest.json").read_bytes() == manifest_list.data
    for image in images:
        instance = out / (image.manifest.digest.split(":", 1)[1] + ".manifest.json")
        assert instance.read_bytes() == image.manifest.data
        for blob in image.blobs():
            assert (out / blob.digest.split(":", 1)[1]).read_bytes() == blob.data


async def put_manifest(
    client: aiohttp.ClientSession, server: TestServer, reference: str, manifest: Blob
) -> None:
    resp = await client.put(
        f"{base(server)}/v2/legacy/app/manifests/{reference}",
        data=manifest.data,
        headers={"Content-Type": manifest.media_type},
    )
    assert resp.status == 201, await resp.text()
