"""Many nodes pull one blob at once: they feed each other instead of the origin."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from krill.blobstore import BlobStore
from krill.origin.piececlaims import piece_claims
from krill.origin.seeding import SWARM_ENGINE_KEY
from tests.components import free_port
from tests.swarm_helpers import (
    finish_peer,
    kill_peers,
    peer_result,
    running_origin,
    running_origin_app,
    running_tracker,
    start_herd,
)

BLOB_SIZE = 64 * 1024 * 1024
PEERS = 8
ORIGIN_UPLINK = 16 * 1024 * 1024  # bytes/s


@pytest.mark.slow
async def test_eight_peers_pull_one_blob_and_the_origin_sends_it_at_most_twice(
    tmp_path: Path,
) -> None:
    """BitTorrent only (no piece claims): the origin's seed is one peer among many.

    With one upload slot the origin's pieces stay distinct; with two (the seed's
    default) it sent 1.6-2.1x on loopback, too close to the bound to test. Its
    upload is held to 16 MiB/s, as a real origin's uplink is the herd's narrow
    link: unlimited on loopback, a CPU starved by other tests let it send 2.01x
    and 2.17x (CI, 2026-12-07), because peers then trade slower than it seeds.
    """
    origin_store = BlobStore(tmp_path / "origin")
    digest = origin_store.put_bytes(os.urandom(BLOB_SIZE))
    tracker_port = free_port()
    announce = f"http://127.0.0.1:{tracker_port}/announce"
    async with (
        running_origin(
            origin_store, announce, seed_upload_slots=1, upload_rate_limit=ORIGIN_UPLINK
        ) as (origin_url, origin_engine),
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


@pytest.mark.slow
async def test_eight_agents_with_piece_claims_get_each_piece_from_the_origin_about_once(
    tmp_path: Path,
) -> None:
    """As the services run by default: nodes claim pieces from the origin over HTTP,
    the origin's seed super-seeds, and the nodes trade the rest."""
    origin_store = BlobStore(tmp_path / "origin")
    digest = origin_store.put_bytes(os.urandom(BLOB_SIZE))
    tracker_port = free_port()
    announce = f"http://127.0.0.1:{tracker_port}/announce"
    async with (
        running_origin_app(origin_store, announce, super_seeding=True) as (origin_url, app),
        running_tracker(tracker_port, origin=[origin_url]) as tracker_url,
    ):
        peers = await start_herd(
            PEERS, tmp_path, announce, tracker_url, str(digest), "--origin", origin_url
        )
        try:
            results = await asyncio.gather(*(peer_result(p) for p in peers))
            finals = await asyncio.gather(*(finish_peer(p) for p in peers))
        finally:
            kill_peers(peers)
        origin_stats = await app[SWARM_ENGINE_KEY].fetch_stats()
        over_http = piece_claims(app).bytes_requested

    for result in results:
        assert result["stored_sha256"] == digest.hex
        assert result["streamed_sha256"] == digest.hex
    fed = sum(int(f["origin_feed_bytes"]) for f in finals)
    assert fed == over_http, "the nodes' count of claimed bytes matches the origin's"
    assert over_http >= BLOB_SIZE // 2, "the origin's share went out as claimed pieces"
    assert sum(int(f["uploaded"]) for f in finals) > 0, "peers never served each other"
    origin_sent = origin_stats.uploaded + over_http
    assert origin_sent <= 1.5 * BLOB_SIZE, (
        f"origin sent {origin_sent / BLOB_SIZE:.2f}x the blob "
        f"({over_http / BLOB_SIZE:.2f}x over HTTP claims)"
    )
