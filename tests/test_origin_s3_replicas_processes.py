"""Two ``krill origin`` processes on one bucket (issue 17's first check), as a user runs them.

An image pushed to origin A pulls identical from origin B (real SeaweedFS, skopeo); A is
SIGKILLed and B still serves it, and an image B never saw; a manifest deleted by digest on
B and ``krill origin gc --grace 0`` leave its own layers 404 on B while a layer it shared
with a kept image answers 200. With ``--replicas``, a blob's rendezvous owner seeds and
caches it, the other streams it from the bucket, and takes over when the owner is killed.
The in-process checks of two apps on one prefix are in ``tests/test_origin_s3_replicas.py``.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from krill.rendezvous import owner
from krill.s3backend import S3Location
from tests.agent_cluster import tracker_process
from tests.components import SKOPEO_FLAGS, free_port, krill_command, krill_process, skopeo
from tests.fixtures_origin import digest_of
from tests.imagebuild import (
    build_image,
    random_files,
    read_oci_layout_digests,
    write_oci_layout,
)
from tests.s3_fixtures import SeaweedFS, s3_location, seaweedfs
from tests.test_origin_s3 import credentials_file, payload, storage_url

__all__ = ["s3_location", "seaweedfs"]  # fixtures used here


def status_of(url: str, method: str = "GET") -> int:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def origin_args(root: Path, port: int, config: Path, location: S3Location) -> list[str]:
    return [
        "origin",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--data",
        str(root / "data"),
        "--storage",
        storage_url(location),
    ]


def copy_image(src: str, dest: str) -> None:
    skopeo("copy", *SKOPEO_FLAGS, src, dest)


@pytest.mark.slow
async def test_two_origins_share_one_bucket(
    seaweedfs: SeaweedFS, s3_location: S3Location, tmp_path: Path
) -> None:
    shared = random_files(31, 2, 64 << 10)
    kept = build_image([shared, random_files(32, 2, 2 << 20)])
    gone = build_image([shared, random_files(33, 2, 2 << 20)])
    assert kept.layers[0].digest == gone.layers[0].digest
    layouts = {
        name: write_oci_layout(tmp_path / name, image.manifest, [image], "v1")
        for name, image in (("kept", kept), ("gone", gone))
    }
    config = tmp_path / "origin.toml"
    config.write_text(f's3_credentials = "{credentials_file(seaweedfs, tmp_path)}"\n')
    port_a, port_b = free_port(), free_port()
    a_root, b_root = tmp_path / "a", tmp_path / "b"
    b_url = f"http://127.0.0.1:{port_b}"
    a_args = origin_args(a_root, port_a, config, s3_location)
    b_args = origin_args(b_root, port_b, config, s3_location)
    for root in (a_root, b_root):
        root.mkdir()
    with krill_process(b_args, b_root / "origin.log", f"{b_url}/v2/"):
        with krill_process(a_args, a_root / "origin.log", f"http://127.0.0.1:{port_a}/v2/") as a:
            for name, layout in layouts.items():
                dest = f"docker://127.0.0.1:{port_a}/team/{name}:v1"
                await asyncio.to_thread(copy_image, f"oci:{layout}:v1", dest)
            first = tmp_path / "from-b-first"
            src = f"docker://127.0.0.1:{port_b}/team/gone:v1"
            await asyncio.to_thread(copy_image, src, f"oci:{first}:v1")
            assert read_oci_layout_digests(first) == read_oci_layout_digests(layouts["gone"])
            a.send_signal(signal.SIGKILL)
            a.wait(timeout=30)

        for name in ("gone", "kept"):  # B alone; it never served "kept" before
            out = tmp_path / f"from-b-{name}"
            src = f"docker://127.0.0.1:{port_b}/team/{name}:v1"
            await asyncio.to_thread(copy_image, src, f"oci:{out}:v1")
            assert read_oci_layout_digests(out) == read_oci_layout_digests(layouts[name])

        url = f"{b_url}/v2/team/gone/manifests/{gone.manifest.digest}"
        assert await asyncio.to_thread(status_of, url, "DELETE") == 202
        args = ["origin", "gc", "--config", str(config), "--data", str(b_root / "data")]
        args += ["--storage", storage_url(s3_location), "--grace", "0"]
        done = await asyncio.to_thread(
            subprocess.run, krill_command(*args), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        own = (gone.config, gone.layers[1], gone.manifest)
        assert f"bucket: removed 3 objects, {sum(len(b.data) for b in own)} bytes" in done.stdout

        def blob_status(repo: str, digest: str) -> int:
            return status_of(f"{b_url}/v2/team/{repo}/blobs/{digest}")

        for blob in (gone.config, *gone.layers[1:]):
            assert await asyncio.to_thread(blob_status, "gone", blob.digest) == 404
        assert await asyncio.to_thread(blob_status, "gone", gone.layers[0].digest) == 200
        assert await asyncio.to_thread(blob_status, "kept", gone.layers[0].digest) == 200
        assert await asyncio.to_thread(status_of, url) == 404
        out = tmp_path / "kept-after-gc"
        src = f"docker://127.0.0.1:{port_b}/team/kept:v1"
        await asyncio.to_thread(copy_image, src, f"oci:{out}:v1")
        assert read_oci_layout_digests(out) == read_oci_layout_digests(layouts["kept"])


def seeded(log: Path, digest: str) -> bool:
    return f"swarm.seeding digest={digest}" in log.read_text()


@pytest.mark.slow
async def test_the_owner_of_a_blob_seeds_and_caches_it_and_the_next_takes_over(
    seaweedfs: SeaweedFS, s3_location: S3Location, tmp_path: Path
) -> None:
    """Rendezvous ownership with two ``krill origin`` processes on one bucket.

    A blob pushed to A but owned by B: its metainfo asked of A is answered
    with B's, and B (not A) seeds it, copying it in from the bucket; A,
    asked for the blob with its local copy gone, streams it from the bucket
    without caching it. With B killed, A answers the metainfo itself and
    seeds the blob.
    """
    config = tmp_path / "origin.toml"
    config.write_text(f's3_credentials = "{credentials_file(seaweedfs, tmp_path)}"\n')
    port_a, port_b = free_port(), free_port()
    a_url, b_url = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    data = next(
        d
        for d in (payload(seed, 300_000) for seed in range(100, 200))
        if owner(digest_of(d), [a_url, b_url]) == b_url
    )
    digest = digest_of(data)
    with tracker_process(tmp_path / "tracker", a_url) as tracker:

        def args(root: Path, port: int, me: str) -> list[str]:
            root.mkdir()
            return [
                *origin_args(root, port, config, s3_location),
                *("--tracker", tracker, "--peer-port", str(free_port())),
                *("--replicas", f"{a_url},{b_url}", "--replica-url", me),
            ]

        a_root, b_root = tmp_path / "a", tmp_path / "b"
        a_log, b_log = a_root / "origin.log", b_root / "origin.log"
        a_blob = a_root / "data/blobs/sha256" / digest[7:9] / digest[7:]
        b_blob = b_root / "data/blobs/sha256" / digest[7:9] / digest[7:]
        with krill_process(args(b_root, port_b, b_url), b_log, f"{b_url}/v2/") as b:
            with krill_process(args(a_root, port_a, a_url), a_log, f"{a_url}/v2/"):
                async with aiohttp.ClientSession() as http:
                    resp = await http.post(
                        f"{a_url}/v2/team/app/blobs/uploads/", params={"digest": digest}, data=data
                    )
                    assert resp.status == 201
                    metainfo = f"{a_url}/krill/v1/metainfo/{digest}"
                    async with http.get(metainfo) as resp:
                        assert resp.status == 200
                        from_a = await resp.read()
                    async with http.get(f"{b_url}/krill/v1/metainfo/{digest}") as resp:
                        assert await resp.read() == from_a  # the owner's, answered by A
                    assert seeded(b_log, digest) and not seeded(a_log, digest)
                    assert b_blob.read_bytes() == data  # the owner copied it in to seed it

                    a_blob.unlink()
                    async with http.get(f"{a_url}/v2/team/app/blobs/{digest}") as resp:
                        assert resp.status == 200 and await resp.read() == data
                    assert not a_blob.exists()  # not the owner: streamed, not cached

                    b.send_signal(signal.SIGKILL)
                    b.wait(timeout=30)
                    async with http.get(metainfo) as resp:
                        assert resp.status == 200 and await resp.read() == from_a
                    assert seeded(a_log, digest) and a_blob.read_bytes() == data
