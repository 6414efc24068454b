"""Piece claims: a herd's nodes take different pieces from the origin, over HTTP.

The origin hands out chunks of a blob's pieces (``origin.piececlaims``); each
node's swarm engine fetches its chunks and hands them to libtorrent, which
offers them to the other nodes (``krill.piecefeed``, ``SwarmEngine``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiohttp import web

import krill.swarm.download
from krill.blobstore import BlobStore
from krill.digests import Digest, sha256_file
from krill.origin.piececlaims import PieceClaims, piece_claims
from krill.originclient import fetch_metainfo
from krill.piecefeed import consecutive_runs
from krill.swarm import Download, Pacer, SwarmEngine, SwarmSettings, SwarmStats
from tests.clocks import ManualClock
from tests.polling import until
from tests.swarm_helpers import running_origin_app, running_tracker

PIECE = 64 * 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_round_hands_out_every_piece_once_then_nothing_until_it_idles() -> None:
    clock = FakeClock()
    claims = PieceClaims(chunk_pieces=16, round_idle=30, clock=clock)
    digest = Digest.parse("sha256:" + "ab" * 32)
    size = 299 * 128 * 1024 + 5  # 300 pieces of 128 KiB
    handed = []
    while (claimed := claims.claim(digest, size)) is not None:
        handed.append(claimed)
        clock.now += 1
    assert [p for chunk in handed for p in chunk] == list(range(300)), "each piece once"
    assert handed[:3] == [range(0, 16), range(16, 32), range(32, 48)]
    sizes = [len(chunk) for chunk in handed]
    assert sizes == sorted(sizes, reverse=True) and sizes[-16:] == [1] * 16, (
        "chunks shrink to single pieces towards the end of the round"
    )
    clock.now += 29
    assert claims.claim(digest, size) is None, "the round is still on: the rest is with peers"
    clock.now += 31
    assert claims.claim(digest, size) == range(0, 16), "a later herd starts a new round"
    empty = Digest.parse("sha256:" + "cd" * 32)
    assert claims.claim(empty, 0) is None, "an empty blob has no pieces to hand out"


def test_consecutive_runs_make_one_range_request_per_run() -> None:
    assert consecutive_runs([7, 3, 4, 5, 9, 10]) == [range(3, 6), range(7, 8), range(9, 11)]
    assert consecutive_runs([]) == []


async def test_claim_and_blob_routes_answer_and_refuse_bad_input(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "origin")
    data = os.urandom(20 * PIECE)
    digest = store.put_bytes(data)
    async with (
        running_tracker() as tracker,
        running_origin_app(store, tracker + "/announce") as (origin, app),
        aiohttp.ClientSession() as http,
    ):
        handed = []
        while True:
            async with http.post(f"{origin}/krill/v1/claims/{digest}") as response:
                if response.status == 204:
                    break
                assert response.status == 200
                answer = await response.json()
                assert answer["piece_length"] == PIECE
                handed += range(answer["first"], answer["end"])
        assert handed == list(range(20)), "every piece of the 20 once, in order"

        headers = {"Range": f"bytes={PIECE}-{3 * PIECE - 1}"}
        async with http.get(f"{origin}/krill/v1/blobs/{digest}", headers=headers) as response:
            assert response.status == 206
            assert await response.read() == data[PIECE : 3 * PIECE]
        assert piece_claims(app).bytes_requested == 2 * PIECE

        unknown = "sha256:" + "0" * 64
        for method, path in (("POST", "claims"), ("GET", "blobs")):
            async with http.request(method, f"{origin}/krill/v1/{path}/{unknown}") as response:
                assert response.status == 404
                assert (await response.json())["errors"][0]["code"] == "BLOB_UNKNOWN"
            async with http.request(method, f"{origin}/krill/v1/{path}/sha256:zz") as response:
                assert response.status == 400
                assert (await response.json())["errors"][0]["code"] == "DIGEST_INVALID"
        bad_range = {"Range": f"bytes={len(data)}-"}
        async with http.get(f"{origin}/krill/v1/blobs/{digest}", headers=bad_range) as response:
            assert response.status == 416


async def start_download(
    engine: SwarmEngine, http: aiohttp.ClientSession, origin: str, digest: Digest
) -> Download:
    return await engine.download(digest, await fetch_metainfo(http, origin, digest))


async def download_with(
    engine: SwarmEngine, http: aiohttp.ClientSession, origin: str, digest: Digest
) -> Path:
    download = await start_download(engine, http, origin, digest)
    async with asyncio.timeout(120):
        return await download.wait_done()


async def test_a_herd_takes_disjoint_pieces_from_the_origin_and_trades_the_rest(
    tmp_path: Path,
) -> None:
    origin_store = BlobStore(tmp_path / "origin")
    data = os.urandom(8 * 1024 * 1024)  # 64 pieces of 128 KiB: 4 chunks for 4 nodes
    digest = origin_store.put_bytes(data)
    async with (
        running_tracker() as tracker,
        running_origin_app(origin_store, tracker + "/announce") as (origin, app),
        aiohttp.ClientSession() as http,
    ):
        settings = SwarmSettings(tracker + "/announce", origin_urls=(origin,))
        stores = [BlobStore(tmp_path / f"node{i}") for i in range(4)]
        async with contextlib.AsyncExitStack() as stack:
            engines = [
                await stack.enter_async_context(SwarmEngine(settings, store)) for store in stores
            ]
            paths = await asyncio.gather(
                *(download_with(engine, http, origin, digest) for engine in engines)
            )
            stats = [await engine.fetch_stats() for engine in engines]
    for path in paths:
        assert sha256_file(str(path)) == digest
    fed = [s.origin_feed_bytes for s in stats]
    assert sum(fed) > 0, "no node fetched its claimed pieces from the origin"
    # Claims are disjoint: together the nodes fetched the blob over HTTP at most once.
    assert sum(fed) <= len(data)
    assert piece_claims(app).bytes_requested <= len(data)
    assert sum(s.downloaded for s in stats) > 0, "the nodes never traded pieces"


Setup = Callable[[aiohttp.ClientSession, str, Digest, web.Application], Awaitable[None]]


class LonePull(NamedTuple):
    data: bytes  # the blob
    stats: SwarmStats  # the node's counters
    claims: PieceClaims  # the origin's claim book
    download: Download


async def lone_node_pull(
    tmp_path: Path, size: int, setup: Setup | None = None, **settings: Any
) -> LonePull:
    """A node whose tracker has never seen the origin (so no peers) pulls a new blob
    of ``size`` bytes, after ``setup`` ran against the origin; the stored copy is
    checked."""
    origin_store = BlobStore(tmp_path / "origin")
    data = os.urandom(size)
    digest = origin_store.put_bytes(data)
    async with (
        running_tracker() as origin_tracker,
        running_tracker() as empty_tracker,
        running_origin_app(origin_store, origin_tracker + "/announce") as (origin, app),
        aiohttp.ClientSession() as http,
    ):
        if setup is not None:
            await setup(http, origin, digest, app)
        node_settings = SwarmSettings(
            empty_tracker + "/announce", origin_urls=(origin,), **settings
        )
        async with SwarmEngine(node_settings, BlobStore(tmp_path / "node")) as engine:
            download = await start_download(engine, http, origin, digest)
            async with asyncio.timeout(120):
                path = await download.wait_done()
            stats = await engine.fetch_stats()
    assert sha256_file(str(path)) == digest
    return LonePull(data, stats, piece_claims(app), download)


async def test_a_lone_node_gets_every_piece_over_http_at_once(tmp_path: Path) -> None:
    pull = await lone_node_pull(tmp_path, 3 * 1024 * 1024 + 17)
    assert pull.stats.origin_feed_bytes == len(pull.data)


async def test_a_blob_is_hashed_as_its_pieces_arrive_not_all_at_the_end(
    tmp_path: Path,
) -> None:
    """The node's digest follows the pieces into the file (claims come front to
    back), so publishing hashes only the tail: the pull ends sooner."""
    size = 4 * 1024 * 1024
    pull = await lone_node_pull(tmp_path, size, download_rate_limit=2 * 1024 * 1024)
    assert pull.download.hashed_early >= size // 8


@pytest.mark.parametrize("durable", [True, False])
async def test_only_durable_downloads_are_written_back_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    """Early writeback only makes the publishing fsync short; a cache that skips the
    fsync (the agent's) must not pay for disk writes during the pull either."""
    written_back: list[int] = []
    real_writeback = krill.swarm.download.start_writeback

    def spy(path: Path, end: int) -> None:  # still asks the kernel
        written_back.append(end)
        real_writeback(path, end)

    monkeypatch.setattr(krill.swarm.download, "start_writeback", spy)
    size = 4 * 1024 * 1024
    pull = await lone_node_pull(
        tmp_path, size, download_rate_limit=2 * 1024 * 1024, durable_downloads=durable
    )
    assert pull.download.hashed_early >= size // 8, "stretches were hashed on the way"
    assert bool(written_back) == durable


async def test_a_download_cancelled_while_it_is_being_hashed_leaves_nothing_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    origin_store = BlobStore(tmp_path / "origin")
    digest = origin_store.put_bytes(os.urandom(8 * 1024 * 1024))
    node_store = BlobStore(tmp_path / "node")
    async with (
        running_tracker() as origin_tracker,
        running_tracker() as empty_tracker,
        running_origin_app(origin_store, origin_tracker + "/announce") as (origin, _),
        aiohttp.ClientSession() as http,
    ):
        settings = SwarmSettings(
            empty_tracker + "/announce",
            origin_urls=(origin,),
            download_rate_limit=2 * 1024 * 1024,
        )
        async with SwarmEngine(settings, node_store) as engine:
            download = await start_download(engine, http, origin, digest)
            await until(lambda: download.hashed_bytes > 0, "the digest task at work")
            download.cancel()
            incoming = node_store.root / "incoming"
            await until(lambda: not any(incoming.iterdir()), "the cancelled download removed")
            assert not node_store.has(digest)
    assert "swarm.task_failed" not in caplog.text
    assert "swarm.digest_failed" not in caplog.text


async def test_an_engine_given_an_http_session_feeds_through_it_and_leaves_it_open(
    tmp_path: Path,
) -> None:
    """The agent hands its own session to the engine: one connection pool to the origin."""
    origin_store = BlobStore(tmp_path / "origin")
    data = os.urandom(2 * 1024 * 1024)
    digest = origin_store.put_bytes(data)
    requests: list[str] = []

    async def count(_s: object, _ctx: object, params: aiohttp.TraceRequestStartParams) -> None:
        requests.append(str(params.url))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(count)
    async with (
        running_tracker() as origin_tracker,
        running_tracker() as empty_tracker,
        running_origin_app(origin_store, origin_tracker + "/announce") as (origin, _),
        aiohttp.ClientSession(trace_configs=[trace]) as agent_http,
    ):
        settings = SwarmSettings(empty_tracker + "/announce", origin_urls=(origin,))
        async with SwarmEngine(settings, BlobStore(tmp_path / "node"), http=agent_http) as engine:
            path = await download_with(engine, agent_http, origin, digest)
        assert not agent_http.closed, "the engine closed a session it does not own"
    assert sha256_file(str(path)) == digest
    assert any("/krill/v1/claims/" in url for url in requests)
    assert any("/krill/v1/blobs/" in url for url in requests)


async def test_pieces_whose_claimer_never_delivers_are_filled_from_the_origin(
    tmp_path: Path,
) -> None:
    """Every chunk was claimed (by nodes that then died): the node, finding no peer
    with the pieces and making no progress, fetches them from the origin itself."""

    async def claim_everything(
        http: aiohttp.ClientSession, origin: str, digest: Digest, _app: web.Application
    ) -> None:
        while True:  # the dead herd's claims
            async with http.post(f"{origin}/krill/v1/claims/{digest}") as response:
                if response.status == 204:
                    return

    size = 9 * 1024 * 1024  # 144 pieces: more than one fill
    pull = await lone_node_pull(tmp_path, size, claim_everything, fill_after=0.5)
    assert pull.stats.origin_feed_bytes == len(pull.data)


async def test_an_origin_that_restarts_its_round_on_every_claim_cannot_loop_a_node(
    tmp_path: Path,
) -> None:
    """Every claim starts a new round (chunk 0 again): the node walks past what it has
    a bounded number of times, then fills the rest from the origin."""

    async def restart_every_round(
        _http: aiohttp.ClientSession, _origin: str, _digest: Digest, app: web.Application
    ) -> None:
        piece_claims(app).round_idle = -1.0

    size = 3 * 1024 * 1024
    pull = await lone_node_pull(tmp_path, size, restart_every_round, fill_after=0.5)
    assert pull.stats.origin_feed_bytes == len(pull.data)
    assert pull.claims.claims_issued <= 2 + size // PIECE, "the node stopped claiming chunk 0"


async def test_the_feed_pacer_holds_the_origin_feed_to_the_download_rate() -> None:
    """The pacer on a clock the test moves (no wall-clock time asserted)."""
    clock = ManualClock(start=100.0)
    pacer = Pacer(1000, clock)  # 1000 bytes/s from t=100
    assert pacer.ahead_after(500) == 0.5  # 500 bytes at once: wait half a second
    clock.advance(0.5)
    assert pacer.ahead_after(500) == 0.5  # 1000 by t=100.5: a second's worth
    took = asyncio.create_task(pacer.took(0))  # waits out that half second on the clock
    await asyncio.sleep(0)
    assert clock.sleepers == 1 and not took.done()
    clock.advance(0.5)
    await took
    clock.advance(2.0)
    assert pacer.ahead_after(100) == 0.0  # long idle: behind, no wait
    assert Pacer(0, clock).ahead_after(10**9) == 0.0  # 0: unlimited
