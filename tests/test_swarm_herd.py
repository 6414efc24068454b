"""Many nodes pull one blob at once: they feed each other instead of the origin."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from krill.blobstore import BlobStore
from tests.components import free_port
from tests.swarm_helpers import (
    finish_peer,
    kill_peers,
    peer_result,
    running_origin,
    running_tracker,
    start_herd,
)

BLOB_SIZE = 64 * 1024 * 1024
PEERS = 8


@pytest.mark.slow
async def test_eight_peers_pull_one_blob_and_the_origin_sends_it_at_most_twice(
    tmp_path: Path,
) -> None:
    origin_store = BlobStore(tmp_path / "origin")
    digest = origin_store.put_bytes(os.urandom(BLOB_SIZE))
    tracker_port = free_port()
    announce = f"http://127.0.0.1:{tracker_port}/announce"
    async with (
        running_origin(origin_store, announce) as (origin_url, origin_engine),
        running_tracker(tracker_port, origin=[origin_url]) as tracker_url,
    ):
        peers = await start_herd(PEERS, tmp_path, announce, tracker_url, str(digest))
        try:
            results = await asyncio.gather(*(peer_result(p) for p in peers))
            finals = await asyncio.gather(*(finish_peer(p) for p in peers))
        finally:
            kill_peers(peers)
        origin_stats = await origin_engine.fetch_stats()

    for result in results:
        assert result["stored_sha256"] == digest.hex
        assert result["streamed_sha256"] == digest.hex
    downloaded_from_peers = sum(int(f["uploaded"]) for f in finals)
    assert downloaded_from_peers > 0, "peers never served each other"
    assert origin_stats.uploaded <= 2 * BLOB_SIZE, (
        f"origin sent {origin_stats.uploaded / BLOB_SIZE:.2f}x the blob; peers sent "
        f"{downloaded_from_peers / BLOB_SIZE:.2f}x"
    )
