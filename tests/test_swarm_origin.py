"""The real ``krill origin --tracker`` and ``krill tracker`` processes serve a swarm pull."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp

from krill.digests import Digest
from krill.metainfo import check_metainfo
from tests.components import free_port, krill_process
from tests.polling import until
from tests.swarm_helpers import finish_peer, kill_peers, peer_result, start_peer


async def push_blob(http: aiohttp.ClientSession, origin: str, data: bytes) -> Digest:
    """Monolithic OCI blob upload: POST a session, PUT the bytes with the digest."""
    digest = Digest.of_bytes(data)
    async with http.post(f"{origin}/v2/swarm/test/blobs/uploads/") as started:
        assert started.status == 202, await started.text()
        location = started.headers["Location"]
    url = location if location.startswith("http") else origin + location
    separator = "&" if "?" in url else "?"
    async with http.put(f"{url}{separator}digest={digest}", data=data) as finished:
        assert finished.status == 201, await finished.text()
    return digest


async def test_origin_and_tracker_processes_serve_a_swarm_pull(tmp_path: Path) -> None:
    """Two peers configured as agents are (the origin's URL for piece claims) pull one blob.

    The tracker introduces them, the origin hands out its metainfo and sends the pieces
    they claim, and they trade the rest. Without claims a super-seeding origin starts
    slowly for a swarm of two (docs/swarm.md, super-seeding), which is not how agents run
    and took this test 12 s instead of one.
    """
    origin_port, tracker_port = free_port(), free_port()
    origin = f"http://127.0.0.1:{origin_port}"
    tracker = f"http://127.0.0.1:{tracker_port}"
    data = os.urandom(3 * 1024 * 1024 + 7)
    with (
        krill_process(
            ["origin", "--listen", f"127.0.0.1:{origin_port}", "--data", str(tmp_path / "o"),
             "--tracker", tracker],
            tmp_path / "origin.log", f"{origin}/v2/",
        ),
        krill_process(
            ["tracker", "--listen", f"127.0.0.1:{tracker_port}", "--origin", origin],
            tmp_path / "tracker.log", f"{tracker}/health",
        ),
    ):
        async with aiohttp.ClientSession() as http:
            digest = await push_blob(http, origin, data)
        peers = [
            await start_peer(tmp_path / f"peer{i}", f"{tracker}/announce", tracker, str(digest),
                             "--origin", origin)
            for i in range(2)
        ]
        try:
            results = await asyncio.gather(*(peer_result(p, limit=60) for p in peers))
            finals = await asyncio.gather(*(finish_peer(p) for p in peers))
        finally:
            kill_peers(peers)
    assert all(r["stored_sha256"] == digest.hex == r["streamed_sha256"] for r in results)
    received = sum(int(f["downloaded"]) + int(f["origin_feed_bytes"]) for f in finals)
    assert received >= 2 * len(data)
    assert sum(int(f["uploaded"]) for f in finals) > 0, "the peers traded through the swarm"
    sidecar = tmp_path / "o" / "blobs" / "sha256" / digest.hex[:2] / f"{digest.hex}.torrent"
    assert sidecar.is_file(), "metainfo is kept beside the blob"


async def test_a_pushed_blob_has_its_metainfo_before_anyone_asks(tmp_path: Path) -> None:
    """The first pull of a new blob must not wait for the origin to hash it."""
    from krill.blobstore import BlobStore

    origin_port = free_port()
    origin = f"http://127.0.0.1:{origin_port}"
    with krill_process(
        ["origin", "--listen", f"127.0.0.1:{origin_port}", "--data", str(tmp_path / "o"),
         "--tracker", f"http://127.0.0.1:{free_port()}"],
        tmp_path / "origin.log", f"{origin}/v2/",
    ):
        async with aiohttp.ClientSession() as http:
            digest = await push_blob(http, origin, os.urandom(2 * 1024 * 1024))
        sidecar = BlobStore(tmp_path / "o").sidecar_path(digest, "torrent")
        await until(sidecar.is_file, "the metainfo made in the background after the push")
        check_metainfo(sidecar.read_bytes(), digest)
