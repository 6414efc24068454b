"""The origin's seeding: its metainfo route survives a damaged sidecar and a vanished blob,
and it super-seeds to few peers at a time."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp

from krill.blobstore import BlobStore
from krill.metainfo import check_metainfo
from krill.swarm import SwarmSettings
from krill.swarm.superseed import SuperSeeding
from tests.components import free_port
from tests.swarm_helpers import running_origin, running_tracker


async def test_a_damaged_sidecar_is_made_again_and_a_missing_blob_is_404(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "origin")
    digest = store.put_bytes(os.urandom(300_000))
    # A crash cut the sidecar short: it must be rebuilt, not trusted (or answered with a 500).
    store.sidecar_path(digest, "torrent").write_bytes(b"d4:info")
    tracker_port = free_port()
    async with (
        running_tracker(tracker_port),
        running_origin(store, f"http://127.0.0.1:{tracker_port}/announce") as (url, _engine),
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{url}/krill/v1/metainfo/{digest}") as response:
            assert response.status == 200
            body = await response.read()
        check_metainfo(body, digest)
        assert store.sidecar_path(digest, "torrent").read_bytes() == body

        missing = "sha256:" + "0" * 64
        async with http.get(f"{url}/krill/v1/metainfo/{missing}") as response:
            assert response.status == 404
            assert (await response.json())["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_the_origin_service_super_seeds_unless_told_not_to(tmp_path: Path) -> None:
    """Its agents take the origin's share over piece claims (docs/swarm.md)."""
    from krill.origin.config import OriginConfig
    from krill.origin.seeding import swarm_settings_for

    base = {"listen": "127.0.0.1:5000", "data": tmp_path, "tracker": "http://127.0.0.1:1"}
    assert swarm_settings_for(OriginConfig(**base)).super_seeding
    assert not swarm_settings_for(OriginConfig(**base, super_seed=False)).super_seeding


def test_an_origin_seeds_to_two_peers_at_a_time_in_either_mode_and_agents_to_any() -> None:
    """A super-seed's uploads duplicate the claims' pieces: an origin keeps them few."""
    origin = SuperSeeding(SwarmSettings(tracker_url="http://t/announce", origin=True))
    agent = SuperSeeding(SwarmSettings(tracker_url="http://t/announce"))
    assert (origin.upload_slots(True), origin.upload_slots(False)) == (2, 2)
    assert (agent.upload_slots(True), agent.upload_slots(False)) == (-1, -1)
    told = SuperSeeding(SwarmSettings(
        tracker_url="http://t/announce", origin=True,
        super_seed_upload_slots=-1, seed_upload_slots=5,
    ))
    assert (told.upload_slots(True), told.upload_slots(False)) == (-1, 5)
