"""A layer rebuilt from a delta is served while it is rebuilt, only verified bytes.

A real delta and the real codec, against a stand-in origin that answers the delta
lookup and the target's metainfo (made by ``krill.metainfo`` from the target, as the
origin makes it, or with one piece hash flipped). The test reads the rebuild the way
serving does: ``wait_available`` then ``read`` up to what is available.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from krill.agent.rebuildstream import RebuildTransfer
from krill.agent.sources import TransferFailed
from krill.delta import create_delta
from krill.digests import Digest
from krill.endpoints import METAINFO
from krill.metainfo import make_metainfo, piece_length_for
from tests.fixtures_agent import DELTA_REPO, CountingMetrics, Offering, rebuilder_offering
from tests.imagebuild import Image, build_image, random_files

LAYER_FILES = 12  # x 96 KiB of incompressible data: a ~1.1 MB layer, 18 pieces of 64 KiB


@dataclass
class Pair:
    v1: Image
    v2: Image
    delta: bytes

    @property
    def target(self) -> bytes:
        return self.v2.layers[1].data


def _pair(tmp_path: Path) -> Pair:
    runtime = random_files(41, count=1, size=512)
    app = random_files(42, count=LAYER_FILES, size=96 * 1024)
    app_v2 = {**app, "etc/release": b"2\n"}
    v1, v2 = build_image([runtime, app]), build_image([runtime, app_v2])
    (tmp_path / "base").write_bytes(v1.layers[1].data)
    (tmp_path / "target").write_bytes(v2.layers[1].data)
    create_delta(tmp_path / "base", tmp_path / "target", tmp_path / "delta")
    return Pair(v1, v2, (tmp_path / "delta").read_bytes())


def _metainfo(tmp_path: Path, pair: Pair, bad_piece: int | None) -> bytes:
    """The target's metainfo as the origin makes it, with piece ``bad_piece``'s hash flipped."""
    metainfo = make_metainfo(tmp_path / "target", Digest.parse(pair.v2.layers[1].digest))
    if bad_piece is None:
        return metainfo
    hashes_at = metainfo.index(b"6:pieces") + len(b"6:pieces")
    hashes_at = metainfo.index(b":", hashes_at) + 1
    flipped = bytearray(metainfo)
    flipped[hashes_at + 20 * bad_piece] ^= 0xFF
    return bytes(flipped)


@dataclass
class Read:
    """What a client streaming the transfer received, and how it ended."""

    body: bytes = b""
    error: TransferFailed | None = None
    # (available, committed) at every wake-up: the last byte only once committed.
    seen: list[tuple[int, bool]] = field(default_factory=list)


async def read_like_serving(transfer: RebuildTransfer) -> Read:
    read = Read()
    try:
        fd = os.open(transfer.partial_path, os.O_RDONLY)
    except FileNotFoundError:  # already renamed: serving opens the committed file then
        try:
            fd = os.open(await transfer.wait_done(), os.O_RDONLY)
        except TransferFailed as exc:
            read.error = exc
            return read
    try:
        while len(read.body) < transfer.size:
            available = await transfer.wait_available(len(read.body))
            read.seen.append((available, transfer.committed))
            read.body += await transfer.read(fd, len(read.body), available)
    except TransferFailed as exc:
        read.error = exc
    finally:
        os.close(fd)
    return read


def offering(
    tmp_path: Path, pair: Pair, bad_piece: int | None, metrics: CountingMetrics
) -> contextlib.AbstractAsyncContextManager[Offering]:
    """A rebuilder whose origin offers the delta and serves the target's metainfo (with
    ``bad_piece``'s hash flipped)."""
    metainfo = _metainfo(tmp_path, pair, bad_piece)

    async def torrent(request: web.Request) -> web.Response:
        return web.Response(body=metainfo)

    return rebuilder_offering(
        tmp_path / "node", pair.v1, pair.v2, pair.delta, metrics, routes={METAINFO.route: torrent}
    )


def _piece(pair: Pair) -> int:
    return piece_length_for(len(pair.target))


def _never_past(read: Read, end: int, pair: Pair) -> None:
    """Only bytes before ``end`` reached the client, all of them the target's own."""
    assert len(read.body) <= end
    assert read.body == pair.target[: len(read.body)]
    assert all(available <= end for available, _ in read.seen)


async def stream(offered: Offering) -> tuple[RebuildTransfer, Read]:
    """Start the rebuild and read it as serving does, to its end or its failure."""
    transfer = await offered.rebuilder.rebuild(offered.target, DELTA_REPO, offered.ensure)
    assert isinstance(transfer, RebuildTransfer)
    return transfer, await read_like_serving(transfer)


async def test_a_rebuild_is_streamed_piece_by_piece_and_committed(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    assert len(pair.target) > 8 * _piece(pair)  # several pieces, or nothing is shown
    metrics = CountingMetrics()
    async with offering(tmp_path, pair, None, metrics) as offered:
        transfer, read = await stream(offered)
        stored = await transfer.wait_done()
        await offered.rebuilder.close()
    assert read.error is None and read.body == pair.target
    # The last byte went out only once the whole digest had been checked and stored.
    assert all(committed for available, committed in read.seen if available == len(pair.target))
    assert stored.read_bytes() == pair.target
    assert metrics.hits == 1 and metrics.failures == []
    assert not list((tmp_path / "node" / "blobs" / "incoming").iterdir())  # work dir removed


async def test_a_bad_first_piece_falls_back_to_the_full_layer_at_once(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    metrics = CountingMetrics()
    async with offering(tmp_path, pair, 0, metrics) as offered:
        rebuilder = offered.rebuilder
        assert await rebuilder.rebuild(offered.target, DELTA_REPO, offered.ensure) is False
        await rebuilder.close()
    assert metrics.failures == ["piece"] and metrics.hits == 0


async def test_a_piece_that_fails_its_hash_is_never_served(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    bad = 7
    metrics = CountingMetrics()
    async with offering(tmp_path, pair, bad, metrics) as offered:
        _, read = await stream(offered)
        await offered.rebuilder.close()
        assert read.error is not None and "piece 7" in str(read.error)
        _never_past(read, bad * _piece(pair), pair)
        assert metrics.failures == ["piece"] and metrics.hits == 0
        # The client was cut off; its retry fetches the layer whole, no second rebuild.
        retry = await offered.rebuilder.rebuild(offered.target, DELTA_REPO, offered.ensure)
        assert retry is False
        assert metrics.failures == ["piece"]
    assert not list((tmp_path / "node" / "blobs" / "incoming").iterdir())


async def test_a_bad_last_piece_keeps_the_whole_body_from_the_client(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    last = (len(pair.target) - 1) // _piece(pair)
    metrics = CountingMetrics()
    async with offering(tmp_path, pair, last, metrics) as offered:
        _, read = await stream(offered)
        await offered.rebuilder.close()
    assert read.error is not None
    _never_past(read, last * _piece(pair), pair)
    assert metrics.failures == ["piece"]
