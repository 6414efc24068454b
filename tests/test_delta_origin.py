"""The origin precomputes deltas when a tag moves and serves the best one for a node's bases."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import subprocess
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpClient

from krill.delta import rebuild_layer
from krill.digests import Digest
from krill.origin.deltas import DELTA_ENGINE, DeltaEngine
from tests.components import SKOPEO_FLAGS, skopeo
from tests.imagebuild import Image, build_image, build_index, realistic_files, write_oci_layout
from tests.polling import until

pytestmark = pytest.mark.slow


def _versions() -> tuple[Image, Image]:
    app_v1 = realistic_files(1)
    app_v2 = dict(app_v1)
    app_v2["usr/bin/tool3"] = (
        app_v2["usr/bin/tool3"][:9000] + b"patched" + app_v2["usr/bin/tool3"][9000:]
    )
    app_v2["etc/os-release"] = b'NAME="Krill test"\nVERSION_ID="2"\n'
    runtime = realistic_files(7, count=8)
    return build_image([runtime, app_v1]), build_image([runtime, app_v2])


async def _push(tmp: Path, server: TestServer, image: Image, tag: str, name: str) -> None:
    layout = write_oci_layout(tmp / f"layout-{name}", image.manifest, [image], name)
    dest = f"docker://{server.host}:{server.port}/app:{tag}"
    await asyncio.to_thread(skopeo, "copy", *SKOPEO_FLAGS, f"oci:{layout}:{name}", dest)


async def _push_versions(tmp: Path, server: TestServer, v1: Image, v2: Image) -> None:
    """Push v1 then v2 as app:latest and wait until the deltas the move queued are done."""
    await _push(tmp, server, v1, "latest", "v1")
    await _push(tmp, server, v2, "latest", "v2")
    await _settle(server.app[DELTA_ENGINE])


def _mark_then_sleep(marker: str, seconds: float) -> None:
    """A long job that says when a worker has taken it (pickled by name into the worker)."""
    Path(marker).touch()
    time.sleep(seconds)


async def _settle(engine: DeltaEngine) -> None:
    async with asyncio.timeout(120):
        while engine.tasks:
            await asyncio.gather(*engine.tasks, return_exceptions=True)
        await engine.idle.wait()


async def test_tag_move_precomputes_a_verified_delta(
    tmp_path: Path,
    origin_server: TestServer,
    aiohttp_client: AiohttpClient,
) -> None:
    v1, v2 = _versions()
    client = await aiohttp_client(origin_server)
    engine = origin_server.app[DELTA_ENGINE]
    await _push_versions(tmp_path, origin_server, v1, v2)

    target, base = v2.layers[1].digest, v1.layers[1].digest
    resp = await client.get(f"/krill/v1/deltas/{target}", params={"have": f"{base}"})
    answer = await resp.json()
    assert answer["status"] == "ok", answer
    assert answer["base"] == base
    assert answer["size"] < len(v2.layers[1].data) / 2
    # The delta is an ordinary blob of the repository, and rebuilds the exact layer.
    blob = await client.get(f"/v2/app/blobs/{answer['delta']}")
    assert blob.status == 200
    (tmp_path / "delta").write_bytes(await blob.read())
    (tmp_path / "base").write_bytes(v1.layers[1].data)
    (tmp_path / "out").mkdir()
    rebuilt = rebuild_layer(tmp_path / "base", tmp_path / "delta", tmp_path / "out")
    assert rebuilt.path.read_bytes() == v2.layers[1].data

    # Another repository that holds the target gets the delta linked on a lookup naming it.
    mount = await client.post(
        "/v2/mirror/app/blobs/uploads/", params={"mount": target, "from": "app"}
    )
    assert mount.status == 201
    assert (await client.get(f"/v2/mirror/app/blobs/{answer['delta']}")).status == 404
    params = {"have": base, "repo": "mirror/app"}
    hit = await (await client.get(f"/krill/v1/deltas/{target}", params=params)).json()
    assert hit["delta"] == answer["delta"]
    assert (await client.get(f"/v2/mirror/app/blobs/{answer['delta']}")).status == 200

    # The unchanged runtime layer got no pair; an unknown pair is queued and answered next time.
    other = v1.layers[0].digest
    first = await (await client.get(f"/krill/v1/deltas/{target}", params={"have": other})).json()
    assert first["status"] == "none" and first["queued"] == 1
    await _settle(engine)
    again = await (await client.get(f"/krill/v1/deltas/{target}", params={"have": other})).json()
    assert again.get("queued", 0) == 0  # computed now (kept or refused as too big)
    assert str(other) in engine.index.entries(Digest.parse(target))

    # A node offering many bases queues only the first few: each costs a computation.
    many = ",".join([v1.config.digest, v2.config.digest, v1.manifest.digest])
    offered = await (await client.get(f"/krill/v1/deltas/{target}", params={"have": many})).json()
    assert offered["queued"] == engine.settings.candidates_per_layer == 2
    await _settle(engine)
    assert str(v1.manifest.digest) not in engine.index.entries(Digest.parse(target))

    metrics = await (await client.get("/metrics")).text()
    assert 'krill_origin_delta_computed_total{result="ok"}' in metrics


async def test_unreproducible_layer_is_counted_and_gets_no_delta(
    tmp_path: Path,
    origin_server: TestServer,
    aiohttp_client: AiohttpClient,
) -> None:
    v1, v2 = _versions()
    client = await aiohttp_client(origin_server)
    # v2's app layer compressed by GNU gzip: no zlib setting reproduces it.
    v2 = _with_layer(v2, 1, _gnu_gzip(gzip.decompress(v2.layers[1].data)))
    await _push_versions(tmp_path, origin_server, v1, v2)
    target = v2.layers[1].digest
    answer = await (
        await client.get(f"/krill/v1/deltas/{target}", params={"have": v1.layers[1].digest})
    ).json()
    assert answer["status"] == "none"
    metrics = await (await client.get("/metrics")).text()
    assert "krill_origin_delta_unreproducible_layers_total 1.0" in metrics


def _gnu_gzip(data: bytes) -> bytes:
    return subprocess.run(["gzip", "-6", "-n", "-c"], input=data, capture_output=True).stdout


def _with_layer(image: Image, index: int, data: bytes) -> Image:
    """``image`` with layer ``index`` replaced by other bytes of the same tar."""
    import json

    from tests.imagebuild import Blob

    layers = list(image.layers)
    layers[index] = Blob(layers[index].media_type, data)
    doc = json.loads(image.manifest.data)
    doc["layers"] = [layer.descriptor() for layer in layers]
    manifest = Blob(image.manifest.media_type, json.dumps(doc).encode())
    return Image(image.config, layers, manifest, image.platform)


async def test_bad_digest_is_a_registry_error(
    origin_server: TestServer,
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(origin_server)
    resp = await client.get("/krill/v1/deltas/sha256:abc", params={"have": "x"})
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "DIGEST_INVALID"


async def test_multi_arch_index_pairs_layers_per_platform(
    tmp_path: Path,
    origin_server: TestServer,
    aiohttp_client: AiohttpClient,
) -> None:
    """Each platform's new layer is paired with the same platform's old layer."""
    versions = {}
    for version in (1, 2):
        images = []
        for arch, seed in (("amd64", 10), ("arm64", 20)):
            files = realistic_files(seed)
            files["etc/os-release"] = f"VERSION_ID={version}\n".encode()
            images.append(build_image([files], architecture=arch))
        versions[version] = images
    client = await aiohttp_client(origin_server)
    engine = origin_server.app[DELTA_ENGINE]
    for version, images in versions.items():
        index = build_index(images)
        layout = write_oci_layout(tmp_path / f"multi{version}", index, images, "multi")
        dest = f"docker://{origin_server.host}:{origin_server.port}/app:latest"
        await asyncio.to_thread(skopeo, "copy", "--all", *SKOPEO_FLAGS, f"oci:{layout}:multi", dest)
    await _settle(engine)
    old_amd, old_arm = (image.layers[0].digest for image in versions[1])
    new_arm = versions[2][1].layers[0].digest
    # The arm64 target was computed against the arm64 base, not the amd64 one.
    assert set(engine.index.entries(Digest.parse(new_arm))) == {old_arm}
    answer = await (
        await client.get(f"/krill/v1/deltas/{new_arm}", params={"have": f"{old_amd},{old_arm}"})
    ).json()
    assert answer["status"] == "ok" and answer["base"] == old_arm


async def test_a_killed_worker_does_not_stop_later_deltas(
    tmp_path: Path,
    origin_server: TestServer,
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(origin_server)
    engine = origin_server.app[DELTA_ENGINE]
    assert engine.settings.workers == 1
    loop = asyncio.get_running_loop()
    worker = await loop.run_in_executor(engine.pool.executor, os.getpid)  # the one worker
    taken = tmp_path / "taken"
    job = loop.run_in_executor(engine.pool.executor, _mark_then_sleep, str(taken), 60)
    await until(taken.exists, "the worker to take the job")
    os.kill(worker, signal.SIGKILL)  # what the OOM killer does
    with pytest.raises(BrokenProcessPool):
        await job

    v1, v2 = _versions()
    await _push_versions(tmp_path, origin_server, v1, v2)
    target, base = v2.layers[1].digest, v1.layers[1].digest
    answer = await (await client.get(f"/krill/v1/deltas/{target}", params={"have": base})).json()
    assert answer["status"] == "ok", answer
    assert engine.file_lists[Digest.parse(target)]  # not cached empty by the dead pool


async def test_a_corrupt_layer_is_recorded_as_failed_and_leaves_no_scratch(
    origin_server: TestServer,
    aiohttp_client: AiohttpClient,
) -> None:
    from krill.origin.appkeys import REPOSITORIES, STORE

    await aiohttp_client(origin_server)
    engine = origin_server.app[DELTA_ENGINE]
    store = origin_server.app[STORE]
    good = gzip.compress(b"\0" * 1024 * 10)
    base = store.put_bytes(good)
    target = store.put_bytes(gzip.compress(os.urandom(200_000))[:50_000])  # truncated gzip
    origin_server.app[REPOSITORIES].link_blob("app", target)
    assert engine.lookup(target, [base])["queued"] == 1
    await _settle(engine)
    assert engine.index.entries(target)[str(base)]["status"] == "none"
    assert engine.lookup(target, [base]).get("queued", 0) == 0  # not recomputed on every lookup
    assert list(engine.work.iterdir()) == []
