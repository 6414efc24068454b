"""The swarm's piece claims over several origin replicas: each blob's owner first.

An agent given several replicas ranks them per blob (``agent.origins.OriginSet``)
and hands that ranking to its swarm engine (``SwarmSettings.origin_ranking``), so
a download claims pieces from its blob's owner, as the HTTP fallback asks it
for bytes; when the owner dies midway the download goes on from the next
replica, and the ranking both paths share puts the dead one last.

Two minimal origin apps (``tests.swarm_helpers``), each with the blobs, and a
lone node (its tracker knows no peers), so every piece comes through claims.
Each origin's claim book counts what it was asked for. And the feed alone: a
run of pieces whose replica dies midway goes on from the next at the piece
where it broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from krill.agent.origins import OriginSet
from krill.blobstore import BlobStore
from krill.digests import Digest, sha256_file
from krill.origin.piececlaims import piece_claims
from krill.originclient import fetch_metainfo
from krill.rendezvous import owner
from krill.swarm import SwarmEngine, SwarmSettings
from krill.swarm.feed import ReplicaPieceFeed
from tests.clocks import ManualClock
from tests.components import free_port
from tests.polling import until
from tests.swarm_helpers import running_origin_app, running_tracker, serving

MIB = 1024 * 1024
PIECE = 64 * 1024
RELAY_CHUNK = 64 * 1024


class KillableRelay:
    """127.0.0.1:``port`` relayed to an upstream port; ``kill`` drops the listener and
    resets every connection, as a replica that died would."""

    def __init__(self, upstream: str) -> None:
        self._upstream_port = int(upstream.rsplit(":", 1)[1])
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    def kill(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(
                "127.0.0.1", self._upstream_port
            )
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, upstream_w}
        try:
            await asyncio.gather(
                _pipe(client_r, upstream_w), _pipe(upstream_r, client_w), return_exceptions=True
            )
        finally:
            self._writers -= {client_w, upstream_w}
            client_w.close()
            upstream_w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(RELAY_CHUNK):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def relay_to(upstream: str) -> AsyncIterator[KillableRelay]:
    relay = KillableRelay(upstream)
    await relay.start()
    try:
        yield relay
    finally:
        relay.kill()


def blob_owned_by(member: str, members: list[str], size: int) -> bytes:
    """Random bytes whose digest ``member`` owns among ``members``."""
    while True:
        data = os.urandom(size)
        if owner(str(Digest.of_bytes(data)), members) == member:
            return data


async def pull(
    engine: SwarmEngine, http: aiohttp.ClientSession, origin: str, digest: Digest
) -> Path:
    download = await engine.download(digest, await fetch_metainfo(http, origin, digest))
    async with asyncio.timeout(120):
        return await download.wait_done()


async def test_each_blobs_claims_go_to_its_owner(tmp_path: Path) -> None:
    store_a, store_b = BlobStore(tmp_path / "a"), BlobStore(tmp_path / "b")
    async with (
        running_tracker() as origin_tracker,
        running_tracker() as empty_tracker,
        running_origin_app(store_a, origin_tracker + "/announce") as (a, app_a),
        running_origin_app(store_b, origin_tracker + "/announce") as (b, app_b),
        aiohttp.ClientSession() as http,
    ):
        members = [a, b]
        blobs = {m: blob_owned_by(m, members, 2 * MIB + 17) for m in members}
        for data in blobs.values():
            store_a.put_bytes(data)
            store_b.put_bytes(data)
        settings = SwarmSettings(
            empty_tracker + "/announce",
            origin_urls=(a, b),
            origin_ranking=OriginSet(members),
        )
        async with SwarmEngine(settings, BlobStore(tmp_path / "node")) as engine:
            for data in blobs.values():
                digest = Digest.of_bytes(data)
                assert sha256_file(str(await pull(engine, http, a, digest))) == digest
    assert piece_claims(app_a).bytes_requested == len(blobs[a]), "A sent only the blob it owns"
    assert piece_claims(app_b).bytes_requested == len(blobs[b]), "B sent only the blob it owns"
    assert piece_claims(app_a).claims_issued > 0 and piece_claims(app_b).claims_issued > 0


async def test_a_download_whose_owner_dies_midway_finishes_from_the_other_replica(
    tmp_path: Path,
) -> None:
    store_a, store_b = BlobStore(tmp_path / "a"), BlobStore(tmp_path / "b")
    async with (
        running_tracker() as origin_tracker,
        running_tracker() as empty_tracker,
        running_origin_app(store_a, origin_tracker + "/announce") as (a, app_a),
        running_origin_app(store_b, origin_tracker + "/announce") as (b_direct, app_b),
        relay_to(b_direct) as relay,
        aiohttp.ClientSession() as http,
    ):
        b = relay.url  # how the node reaches B, and what dies
        members = [a, b]
        data = blob_owned_by(b, members, 8 * MIB)
        digest = store_a.put_bytes(data)
        store_b.put_bytes(data)
        origins = OriginSet(members)
        settings = SwarmSettings(
            empty_tracker + "/announce",
            origin_urls=(a, b),
            origin_ranking=origins,
            download_rate_limit=2 * MIB,  # a few seconds: time to kill B midway
        )
        async with SwarmEngine(settings, BlobStore(tmp_path / "node")) as engine:
            download = await engine.download(digest, await fetch_metainfo(http, a, digest))
            await until(lambda: download.verified_pieces >= 16, "a first chunk from the owner")
            assert piece_claims(app_a).claims_issued == 0, "A was not asked while B was up"
            relay.kill()
            async with asyncio.timeout(120):
                path = await download.wait_done()
        assert sha256_file(str(path)) == digest
    assert piece_claims(app_b).bytes_requested < len(data), "B died before it sent it all"
    assert piece_claims(app_a).claims_issued > 0, "the rest was claimed from A"
    assert origins.ranking(digest) == [a, b], "B is last for the agent's HTTP path too"
    assert b in origins.failing()


def dying_origin(data: bytes, pieces_sent: int) -> web.Application:
    """An origin whose blob responses stop after ``pieces_sent`` pieces: it died."""

    async def blob(request: web.Request) -> web.StreamResponse:
        first, last = (int(n) for n in request.headers["Range"][6:].split("-"))
        response = web.StreamResponse(
            status=206, headers={"Content-Range": f"bytes {first}-{last}/{len(data)}"}
        )
        response.content_length = last - first + 1
        await response.prepare(request)
        await response.write(data[first : first + pieces_sent * PIECE])
        assert request.transport is not None
        request.transport.abort()
        return response

    app = web.Application()
    app.router.add_get("/krill/v1/blobs/{digest}", blob)
    return app


async def test_a_run_of_pieces_broken_midway_goes_on_from_the_next_replica(
    tmp_path: Path,
) -> None:
    good_port, dying_port = free_port(), free_port()
    good, dying = f"http://127.0.0.1:{good_port}", f"http://127.0.0.1:{dying_port}"
    members = [good, dying]
    data = blob_owned_by(dying, members, 8 * PIECE)
    store = BlobStore(tmp_path / "good")
    digest = store.put_bytes(data)
    async with (
        running_tracker() as tracker,
        running_origin_app(store, tracker + "/announce", good_port) as (_, app),
        serving(dying_origin(data, pieces_sent=3), dying_port),
        aiohttp.ClientSession() as http,
    ):
        origins = OriginSet(members, clock=ManualClock())
        feed = ReplicaPieceFeed(http, (good, dying), origins, digest, len(data), PIECE)
        got = [(index, piece) async for index, piece in feed.pieces(range(0, 8))]
    assert [index for index, _ in got] == list(range(8))
    assert b"".join(piece for _, piece in got) == data
    assert piece_claims(app).bytes_requested == 5 * PIECE, "from piece 3 on, not again from 0"
    assert origins.ranking(digest) == [good, dying]


async def test_a_replica_without_the_blob_is_passed_over_but_not_marked_failed(
    tmp_path: Path,
) -> None:
    """Its cache lost the blob (a 404): the next replica is asked, and the first stays
    up for every path, unlike one that cannot be reached."""
    data = os.urandom(4 * PIECE)
    store = BlobStore(tmp_path / "has")
    async with (
        running_tracker() as tracker,
        running_origin_app(store, tracker + "/announce") as (has, app_has),
        running_origin_app(BlobStore(tmp_path / "lost"), tracker + "/announce") as (lost, _),
        aiohttp.ClientSession() as http,
    ):
        members = [has, lost]
        while owner(str(Digest.of_bytes(data)), members) != lost:
            data = os.urandom(4 * PIECE)
        digest = store.put_bytes(data)
        origins = OriginSet(members, clock=ManualClock())
        feed = ReplicaPieceFeed(http, (has, lost), origins, digest, len(data), PIECE)
        claimed = await feed.claim()
        assert claimed is not None and claimed.start == 0
    assert piece_claims(app_has).claims_issued == 1
    assert origins.failing() == set()
    assert origins.ranking(digest) == [lost, has], "the owner is still asked first"
