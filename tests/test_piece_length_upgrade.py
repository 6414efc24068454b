"""The piece-length rule changed (2026-12-06): torrents of the old length keep working.

``krill.metainfo`` says what each side does ("Upgrades"): origins remake a
stored torrent of the old length, nodes still download one handed out before
the change (a tracker's cache, an origin not yet upgraded), and the origin's
piece claims are cut in the piece length the node's torrent has.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import aiohttp

from krill import bencode
from krill.blobstore import BlobStore
from krill.digests import Digest, sha256_file
from krill.metainfo import (
    check_metainfo,
    info_hash,
    legacy_piece_length_for,
    make_metainfo,
    piece_length_for,
)
from krill.origin.piececlaims import PieceClaims, piece_claims
from krill.swarm import SwarmEngine, SwarmSettings
from tests.swarm_helpers import running_origin_app, running_tracker

SIZE = 16 * 1024 * 1024  # 128 pieces of 128 KiB now, 256 of 64 KiB under the old rule
OLD, NEW = 64 * 1024, 128 * 1024


def old_rule_metainfo(path: Path, digest: Digest) -> bytes:
    """The torrent origins made for the blob before the rule changed (64 KiB pieces)."""
    data = path.read_bytes()
    length = legacy_piece_length_for(len(data))
    hashes = b"".join(
        hashlib.sha1(data[i : i + length]).digest() for i in range(0, len(data), length)
    )
    info = {"length": len(data), "name": digest.hex, "piece length": length, "pieces": hashes}
    return bencode.encode({"info": info})


def test_the_blob_of_these_tests_has_another_length_under_each_rule() -> None:
    assert (piece_length_for(SIZE), legacy_piece_length_for(SIZE)) == (NEW, OLD)


def test_each_piece_length_has_its_own_round_of_claims() -> None:
    claims = PieceClaims(chunk_pieces=16, round_idle=30, clock=lambda: 0.0)
    digest = Digest.parse("sha256:" + "ab" * 32)
    assert claims.claim(digest, SIZE) == range(0, 8), "128 pieces: chunks of 128/16"
    assert claims.claim(digest, SIZE, OLD) == range(0, 16), "the old torrent's 256: 16 each"
    assert claims.claim(digest, SIZE, NEW) == range(8, 16), "the current round goes on"
    old_round = []
    while (claimed := claims.claim(digest, SIZE, OLD)) is not None:
        old_round += claimed
    assert old_round == list(range(16, 256))


async def test_the_origin_remakes_an_old_torrent_and_claims_in_the_node_s_length(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path / "origin")
    digest = store.put_bytes(os.urandom(SIZE))
    old = old_rule_metainfo(store.path(digest), digest)
    check_metainfo(old, digest)  # a node accepts it
    store.sidecar_path(digest, "torrent").write_bytes(old)  # kept from before the upgrade
    async with (
        running_tracker() as tracker,
        running_origin_app(store, tracker + "/announce") as (origin, _app),
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{origin}/krill/v1/metainfo/{digest}") as response:
            assert response.status == 200
            served = await response.read()
        assert served == make_metainfo(store.path(digest), digest), "made again, current rule"
        assert store.sidecar_path(digest, "torrent").read_bytes() == served
        check_metainfo(served, digest, legacy=False)

        answers = {}
        for named in (None, str(OLD), str(NEW), "262144", "many"):
            params = {} if named is None else {"piece_length": named}
            async with http.post(f"{origin}/krill/v1/claims/{digest}", params=params) as response:
                answers[named] = (response.status, await response.read())
    assert answers[None][0] == 200 and b'"piece_length": 131072' in answers[None][1]
    assert answers[str(OLD)][0] == 200 and b'"piece_length": 65536' in answers[str(OLD)][1]
    assert answers[str(NEW)][0] == 200
    assert answers["262144"] == (400, b"piece_length must be one of [65536, 131072]")
    assert answers["many"][0] == 400


async def test_a_node_given_an_old_torrent_still_pulls_it_through_the_origin_s_claims(
    tmp_path: Path,
) -> None:
    """A tracker's cache handed out the old torrent: its swarm has no seeding origin
    (origins seed the current one), so the node's claims must bring every piece."""
    origin_store = BlobStore(tmp_path / "origin")
    digest = origin_store.put_bytes(os.urandom(SIZE))
    old = old_rule_metainfo(origin_store.path(digest), digest)
    async with (
        running_tracker() as tracker,
        running_origin_app(origin_store, tracker + "/announce") as (origin, app),
    ):
        settings = SwarmSettings(tracker + "/announce", origin_urls=(origin,))
        async with SwarmEngine(settings, BlobStore(tmp_path / "node")) as engine:
            download = await engine.download(digest, old)
            async with asyncio.timeout(120):
                path = await download.wait_done()
            stats = await engine.fetch_stats()
    assert sha256_file(str(path)) == digest
    assert download.piece_length == OLD
    assert stats.origin_feed_bytes == SIZE, "every piece from the claims, none refused"
    assert piece_claims(app).bytes_requested == SIZE
    assert info_hash(old) != info_hash(make_metainfo(origin_store.path(digest), digest))
