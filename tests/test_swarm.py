"""SwarmEngine against a real tracker and real libtorrent peers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import libtorrent as lt
import pytest

from krill.blobstore import BlobStore
from krill.digests import Digest, sha256_file
from krill.metainfo import make_metainfo
from krill.swarm import Download, DownloadFailed, SwarmEngine, SwarmSettings, session_settings
from tests.clocks import ManualClock
from tests.components import free_port
from tests.polling import until
from tests.swarm_helpers import running_tracker

PIECE = 64 * 1024


@pytest.fixture
async def announce_url() -> AsyncIterator[str]:
    async with running_tracker() as base:
        yield base + "/announce"


def make_blob(store: BlobStore, size: int) -> tuple[Digest, bytes, bytes]:
    data = os.urandom(size)
    digest = store.put_bytes(data)
    return digest, data, make_metainfo(store.path(digest), digest)


async def read_streaming(download: Download) -> bytes:
    """Read the verified prefix as it grows, the way the agent serves a blob."""
    out = bytearray()
    with download.open() as f:
        while len(out) < download.size:
            available = await download.wait_available(len(out))
            f.seek(len(out))
            out += f.read(available - len(out))
    return bytes(out)


async def test_download_streams_verifies_publishes_and_shares_one_flight(
    tmp_path: Path, announce_url: str
) -> None:
    origin_store, agent_store = BlobStore(tmp_path / "o"), BlobStore(tmp_path / "a")
    digest, data, metainfo = make_blob(origin_store, 3 * 1024 * 1024 + 123)
    async with (
        SwarmEngine(SwarmSettings(announce_url, origin=True), origin_store) as origin,
        SwarmEngine(SwarmSettings(announce_url), agent_store) as agent,
    ):
        await origin.seed(digest, metainfo)
        first = await agent.download(digest, metainfo)
        second = await agent.download(digest, metainfo)
        assert first is second, "concurrent requests share one download"
        assert not agent_store.has(digest), "nothing visible before verification"
        assert first.partial_path.parent.parent == agent_store.root / "incoming"
        streamed, path = await asyncio.gather(read_streaming(first), second.wait_done())
        assert streamed == data
        assert path == agent_store.path(digest)
        assert sha256_file(str(path)) == digest
        assert not first.partial_path.parent.exists(), "incoming area cleaned up"
        again = await agent.download(digest, metainfo)
        assert again.done and again.available == len(data)
        assert await again.wait_done() == path
        stats = await agent.fetch_stats()
        assert stats.downloaded >= len(data)
        assert stats.torrents == 1, "the finished blob is seeded from the store"


async def test_bad_metainfo_is_refused(tmp_path: Path, announce_url: str) -> None:
    store = BlobStore(tmp_path / "a")
    digest, _, metainfo = make_blob(store, 1000)
    other = Digest.of_bytes(b"other")
    async with SwarmEngine(SwarmSettings(announce_url), BlobStore(tmp_path / "b")) as agent:
        with pytest.raises(DownloadFailed, match="not the requested blob"):
            await agent.download(other, metainfo)
        with pytest.raises(DownloadFailed, match="unusable metainfo"):
            await agent.download(digest, b"garbage")


async def test_cancel_fails_waiters_and_removes_partial_data(
    tmp_path: Path, announce_url: str
) -> None:
    store = BlobStore(tmp_path / "a")
    digest, _, metainfo = make_blob(BlobStore(tmp_path / "nobody-seeds"), 500_000)
    async with SwarmEngine(SwarmSettings(announce_url), store) as agent:
        download = await agent.download(digest, metainfo)
        waiter = asyncio.create_task(download.wait_available(0))
        await asyncio.sleep(0)  # the waiter is inside wait_available
        download.cancel()
        with pytest.raises(DownloadFailed, match="cancelled"):
            await waiter
        with pytest.raises(DownloadFailed):
            await download.wait_done()
        partial_dir = download.partial_path.parent
        await until(lambda: not partial_dir.exists(), "the partial data removed")
        assert not store.has(digest)
        fresh = await agent.download(digest, metainfo)
        assert fresh is not download, "a cancelled download is not handed out again"


async def test_idle_seeds_are_dropped_after_the_ttl(tmp_path: Path, announce_url: str) -> None:
    store = BlobStore(tmp_path / "o")
    digest, _, metainfo = make_blob(store, 100_000)
    clock = ManualClock()
    # No first-announce wait: on a clock that stands still it would never time out.
    settings = SwarmSettings(announce_url, origin=True, seed_ttl=60, first_announce_timeout=0)
    async with SwarmEngine(settings, store, clock=clock) as origin:
        await origin.seed(digest, metainfo)
        assert (await torrent_count(origin)) == 1
        clock.advance(61)  # the pump's next tick finds the seed idle for longer than the ttl
        await until(lambda: origin.super_seeding(digest) is None, "the idle seed dropped")
        assert (await torrent_count(origin)) == 0
        assert store.has(digest), "dropping the torrent keeps the blob"


async def test_a_seed_asked_for_as_it_expires_is_seeded_again(
    tmp_path: Path, announce_url: str
) -> None:
    """A request right after the pump's expiry must not be answered by the torrent
    that is on its way out: it waits for the removal and seeds the blob again."""
    store = BlobStore(tmp_path / "o")
    digest, _, metainfo = make_blob(store, 100_000)
    clock = ManualClock()
    settings = SwarmSettings(announce_url, origin=True, first_announce_timeout=0)
    async with SwarmEngine(settings, store, clock=clock) as origin:
        await origin.seed(digest, metainfo)
        clock.advance(3600)  # idle for an hour: the pump's next tick expires it
        await until(lambda: origin.super_seeding(digest) is None, "the seed's expiry")
        await origin.seed(digest, metainfo)
        assert (await torrent_count(origin)) == 1
        assert origin.super_seeding(digest) is not None, "the blob is seeded"


async def torrent_count(engine: SwarmEngine) -> int:
    """libtorrent's torrent count, failing rather than hanging if its stats alert never comes.

    ``fetch_stats`` times out on the engine's clock; on a ManualClock that stands still
    a lost alert would hang the whole suite, so the wait is also bounded in real time.
    """
    async with asyncio.timeout(60):
        return (await engine.fetch_stats()).torrents


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(data)


def flip_a_byte_in_every_other_piece(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:
        for piece in range(0, len(data) // PIECE, 2):
            f.seek(piece * PIECE + 100)
            f.write(bytes([data[piece * PIECE + 100] ^ 0xFF]))


@contextlib.asynccontextmanager
async def lying_peer(
    path: Path, data: bytes, metainfo: bytes, announce_url: str
) -> AsyncIterator[lt.session]:
    """A libtorrent peer that serves ``data`` corrupted: one byte flipped in every other piece.

    libtorrent checks a seed's pieces (fully on add, or lazily in seed mode), so the
    peer starts from the true file and the bytes are altered underneath it only once
    it has verified them and is seeding: from then on it serves bad pieces unaware.
    """
    write_file(path, data)
    session = lt.session(session_settings(SwarmSettings(announce_url)))
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(lt.bdecode(metainfo))
    params.save_path = str(path.parent)
    params.trackers = [announce_url]
    handle = session.add_torrent(params)
    for _ in range(300):
        if handle.status().is_seeding:
            break
        await asyncio.sleep(0.1)
    assert handle.status().is_seeding
    flip_a_byte_in_every_other_piece(path, data)
    try:
        yield session
    finally:
        holder = [session]
        del session, handle
        await asyncio.to_thread(holder.clear)


async def failed_pieces(*engines: SwarmEngine) -> int:
    """Pieces the engines received that failed their hash check."""
    return sum([(await engine.fetch_stats()).failed_pieces for engine in engines])


@pytest.mark.slow
async def test_a_peer_serving_corrupt_pieces_corrupts_nobody(
    tmp_path: Path, announce_url: str
) -> None:
    origin_store = BlobStore(tmp_path / "origin")
    digest, data, metainfo = make_blob(origin_store, 4 * 1024 * 1024)
    stores = [BlobStore(tmp_path / f"agent{i}") for i in range(2)]
    async with (
        lying_peer(tmp_path / "liar" / digest.hex, data, metainfo, announce_url),
        SwarmEngine(SwarmSettings(announce_url), stores[0]) as one,
        SwarmEngine(SwarmSettings(announce_url), stores[1]) as two,
    ):
        downloads = [await one.download(digest, metainfo), await two.download(digest, metainfo)]
        readers = [asyncio.create_task(read_streaming(d)) for d in downloads]
        # First only the lying peer is there: its altered pieces fail their hash.
        for _ in range(600):
            if await failed_pieces(one, two):
                break
            await asyncio.sleep(0.1)
        assert await failed_pieces(one, two) > 0, "the lying peer served no bad piece"
        assert not any(store.has(digest) for store in stores)
        # Then an honest origin joins and everyone finishes with the true blob.
        origin_settings = SwarmSettings(announce_url, origin=True)
        async with SwarmEngine(origin_settings, origin_store) as origin:
            await origin.seed(digest, metainfo)
            async with asyncio.timeout(120):
                paths = await asyncio.gather(*(d.wait_done() for d in downloads))
                streamed = await asyncio.gather(*readers)
    for path, stream in zip(paths, streamed, strict=True):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest.hex
        assert stream == data


@pytest.mark.slow
async def test_swarm_recovers_after_an_in_memory_tracker_restarts(tmp_path: Path) -> None:
    origin_store, agent_store = BlobStore(tmp_path / "o"), BlobStore(tmp_path / "a")
    digest, data, metainfo = make_blob(origin_store, 1024 * 1024)
    port = free_port()
    announce_url = f"http://127.0.0.1:{port}/announce"
    fast = {"interval": 1, "min_interval": 1, "peer_ttl": 5}
    async with SwarmEngine(SwarmSettings(announce_url, origin=True), origin_store) as origin:
        async with running_tracker(port, **fast):
            await origin.seed(digest, metainfo)  # returns once the tracker has its announce
        # The tracker restarts empty; the origin re-announces on its own.
        async with running_tracker(port, **fast):
            async with SwarmEngine(SwarmSettings(announce_url), agent_store) as agent:
                download = await agent.download(digest, metainfo)
                async with asyncio.timeout(90):
                    path = await download.wait_done()
    assert path.read_bytes() == data


async def test_a_lone_downloader_turns_dynamic_super_seeding_off_and_completes(
    tmp_path: Path, announce_url: str
) -> None:
    """Dynamic super-seeding is armed while nobody downloads; one node alone disarms it."""
    origin_store, agent_store = BlobStore(tmp_path / "o"), BlobStore(tmp_path / "a")
    digest, data, metainfo = make_blob(origin_store, 1024 * 1024 + 5)
    settings = SwarmSettings(announce_url, origin=True, super_seed_min_peers=3)
    async with (
        SwarmEngine(settings, origin_store) as origin,
        SwarmEngine(SwarmSettings(announce_url), agent_store) as agent,
    ):
        await origin.seed(digest, metainfo)
        assert origin.super_seeding(digest) is True, "armed for a herd while idle"
        download = await agent.download(digest, metainfo)
        modes: list[bool | None] = []

        async def watch_origin_mode() -> None:
            while not download.done:
                modes.append(origin.super_seeding(digest))
                await asyncio.sleep(0.05)

        async with asyncio.timeout(60):
            _, path = await asyncio.gather(watch_origin_mode(), download.wait_done())
        assert path.read_bytes() == data
        assert False in modes, "the origin served the lone node in normal mode"
        assert origin.super_seed_toggles(digest) >= 1


async def test_callers_racing_after_a_cancel_share_one_new_download(tmp_path: Path) -> None:
    """Re-adding a cancelled torrent waits for its removal; callers arriving meanwhile
    must still end up on one download (two would write one torrent's data into two
    directories, and one of them could never finish)."""
    origin_store, node_store = BlobStore(tmp_path / "origin"), BlobStore(tmp_path / "node")
    data = os.urandom(1_000_000)
    digest = origin_store.put_bytes(data)
    metainfo = make_metainfo(origin_store.path(digest), digest)
    async with running_tracker() as tracker:
        announce = f"{tracker}/announce"
        async with (
            SwarmEngine(SwarmSettings(announce, origin=True), origin_store) as origin,
            SwarmEngine(SwarmSettings(announce), node_store) as node,
        ):
            first = await node.download(digest, metainfo)
            first.cancel()
            again, also = await asyncio.gather(
                node.download(digest, metainfo), node.download(digest, metainfo)
            )
            assert again is also and again is not first
            await origin.seed(digest, metainfo)
            async with asyncio.timeout(60):
                path = await again.wait_done()
    assert path.read_bytes() == data
    assert list((tmp_path / "node" / "incoming").iterdir()) == []


async def test_a_removal_cuts_the_pumps_pause_between_batches_short(
    tmp_path: Path, announce_url: str
) -> None:
    """A finished download's publishing waits for its torrent's removal alert; the
    pump's pause between alert batches must not hold that alert back. On a clock
    that stands still the pause never ends by itself, nor does the engine's wait
    for the alert: only cutting the pause short lets the removal complete."""
    store = BlobStore(tmp_path / "a")
    # Many pieces: a download down to its last few would keep the pump from pausing.
    digest, _, metainfo = make_blob(BlobStore(tmp_path / "nobody-seeds"), 2_000_000)
    clock = ManualClock()
    async with SwarmEngine(SwarmSettings(announce_url), store, clock=clock) as agent:
        download = await agent.download(digest, metainfo)
        # The pump is the only thing in the engine that sleeps on the clock here.
        await until(lambda: clock.sleepers == 1, "the pump pausing between batches")
        download.cancel()  # the torrent's removal begins, and waits for its alert
        partial_dir = download.partial_path.parent
        await until(lambda: not partial_dir.exists(), "the removal alert handled")


async def test_a_super_seeding_origin_answers_without_waiting_for_its_first_announce(
    tmp_path: Path,
) -> None:
    """Its nodes take its share over piece claims, so the first metainfo answer need
    not wait until the tracker lists it; a plain seed still waits (its nodes need it).

    The tracker holds every announce unanswered until libtorrent gives up on it. The
    plain seed starts first, so were the super-seed waiting too, the plain one's wait
    would end first."""
    announced = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        announced.set()
        await reader.read()  # until the client gives up
        writer.close()

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    announce = f"http://127.0.0.1:{port}/announce"
    store = BlobStore(tmp_path / "o")
    digest, _, metainfo = make_blob(store, 100_000)
    try:
        async with (
            # Its wait must outlast the super-seed's start on a loaded machine (default 2 s).
            SwarmEngine(
                SwarmSettings(announce, origin=True, first_announce_timeout=60), store
            ) as plain,
            SwarmEngine(SwarmSettings(announce, origin=True, super_seeding=True), store) as sup,
        ):
            plain_seeding = asyncio.create_task(plain.seed(digest, metainfo))
            await until(announced.is_set, "the plain seed's announce reached the tracker")
            await sup.seed(digest, metainfo)
            assert not plain_seeding.done(), "the plain seed still waits for its announce"
            plain_seeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await plain_seeding
    finally:
        silent.close()


async def test_a_download_down_to_its_last_pieces_is_not_held_by_the_pumps_pause(
    tmp_path: Path, announce_url: str
) -> None:
    """Its last piece's alert starts publishing: the pump does not pause before it.

    On the node's clock, which stands still, a pause would never end (nothing
    hurries the pump while pieces arrive), and its pieces "keep coming" for good."""
    origin_store, agent_store = BlobStore(tmp_path / "o"), BlobStore(tmp_path / "a")
    digest, data, metainfo = make_blob(origin_store, 8 * PIECE)  # "nearly done" at once
    # Held to about four pieces a second, so the pieces arrive over several batches.
    slow_origin = SwarmSettings(announce_url, origin=True, upload_rate_limit=4 * PIECE)
    clock = ManualClock()
    async with (
        SwarmEngine(slow_origin, origin_store) as origin,
        SwarmEngine(SwarmSettings(announce_url), agent_store, clock=clock) as agent,
    ):
        await origin.seed(digest, metainfo)
        download = await agent.download(digest, metainfo)
        # The pump began a pause before the download existed, and on this clock it
        # ends only when the clock moves: move it, by less than the time within which
        # pieces count as still coming.
        await until(lambda: clock.sleepers == 1, "the pump's pause from before the download")
        clock.advance(0.1)
        async with asyncio.timeout(30):  # forever if the pump paused
            path = await download.wait_done()
        assert path.read_bytes() == data
