"""Claimed pieces leave the origin in turns (``origin.pieceburst``).

The origin's ``GET /krill/v1/blobs/<digest>`` sends a claimed range one piece
per turn, ``slots`` connections at a time, so each piece is whole at its node
sooner. These tests check what a node relies on: the bytes are exactly the
blob's, the turns alternate between the connections that wait, and a client
that stops reading does not keep the others waiting, and the origin's
metrics show the turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import krill.origin.pieceburst as pieceburst
from krill.blobstore import BlobStore
from krill.config import ConfigError
from krill.digests import Digest
from krill.endpoints import BLOBS
from krill.metainfo import piece_length_for
from krill.origin.appkeys import METRICS
from krill.origin.config import OriginConfig, load_origin_config
from krill.origin.pieceburst import PieceTurnstile
from krill.origin.piececlaims import install_piece_claims, piece_turnstile
from krill.origin.server import create_app
from tests.polling import until
from tests.swarm_helpers import serving


@contextlib.asynccontextmanager
async def _origin(store: BlobStore, slots: int) -> AsyncIterator[tuple[str, web.Application]]:
    app = web.Application()
    install_piece_claims(app, store, burst_slots=slots)
    async with serving(app) as url:
        yield url, app


def _blob(store: BlobStore, size: int) -> tuple[Digest, bytes]:
    data = os.urandom(size)
    return store.put_bytes(data), data


async def _get_range(url: str, digest: Digest, start: int, stop: int) -> bytes:
    async with aiohttp.ClientSession() as http:
        headers = {"Range": f"bytes={start}-{stop - 1}"}
        async with http.get(BLOBS.url(url, digest), headers=headers) as response:
            assert response.status == 206
            return await response.read()


async def test_a_range_through_the_turnstile_is_the_blobs_bytes_one_turn_per_piece(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path / "store")
    digest, data = _blob(store, 1 << 20)
    piece = piece_length_for(len(data))
    start, stop = 100, len(data) - 50  # neither end on a piece boundary
    async with _origin(store, slots=2) as (url, app):
        got = await _get_range(url, digest, start, stop)
        turnstile = piece_turnstile(app)
        assert turnstile is not None
        assert got == data[start:stop]
        pieces = len(range(start // piece, (stop - 1) // piece + 1))
        # The origin counts a piece once its socket has drained, which the client
        # may see (its last byte read) before the origin's task runs again.
        await until(lambda: turnstile.pieces_sent >= pieces, "every piece's turn ended")
        assert turnstile.pieces_sent == pieces, "one turn per piece the range touches"


async def test_with_one_slot_waiting_connections_take_turns_piece_by_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "store")
    digest, data = _blob(store, 1 << 20)
    piece = piece_length_for(len(data))
    pieces = len(data) // piece
    sending: list[int] = []  # the socket of each piece sent, in order
    active = peak = 0
    both_waiting = asyncio.Event()
    original = pieceburst.send_file_range

    async def watched(raw: Any, file_fd: int, offset: int, count: int) -> None:
        nonlocal active, peak
        await both_waiting.wait()  # the first turn begins once both requests are in
        active += 1
        peak = max(peak, active)
        sending.append(raw.fd)
        try:
            await original(raw, file_fd, offset, count)
        finally:
            active -= 1

    monkeypatch.setattr(pieceburst, "send_file_range", watched)
    async with _origin(store, slots=1) as (url, app):
        turnstile = piece_turnstile(app)
        assert turnstile is not None
        # Not about expiry: a loaded loop must not pass the slot on (0.25 s) while the
        # second request is still on its way.
        turnstile.max_hold = 3600
        entered = 0
        send = turnstile.send

        async def counted(*args: Any) -> None:
            nonlocal entered
            entered += 1
            if entered == 2:
                both_waiting.set()
            await send(*args)

        monkeypatch.setattr(turnstile, "send", counted)
        first, second = await asyncio.gather(
            _get_range(url, digest, 0, len(data)), _get_range(url, digest, 0, len(data))
        )
    assert first == data and second == data
    assert peak == 1, "one slot: one piece on its way at a time"
    assert len(sending) == 2 * pieces
    assert all(a != b for a, b in itertools.pairwise(sending)), (
        "each connection queues again behind the other after its piece"
    )


async def test_a_client_that_stops_reading_keeps_no_one_waiting(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    digest, data = _blob(store, 8 << 20)  # far more than a stalled socket buffers
    async with _origin(store, slots=1) as (url, app):
        turnstile = piece_turnstile(app)
        assert turnstile is not None
        turnstile.max_hold = 0.05
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = url.removeprefix("http://").split(":")
        try:
            await asyncio.to_thread(stalled.connect, (host, int(port)))
            path = BLOBS.url("", digest)
            stalled.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
                            f"Range: bytes=0-{len(data) - 1}\r\n\r\n".encode())
            stuck = turnstile
            await until(lambda: stuck.holds_expired > 0, "the stalled first piece lost its turn")
            async with asyncio.timeout(30):  # against a hang: the slot never came back
                got = await _get_range(url, digest, 0, len(data) // 4)
            assert got == data[: len(data) // 4]
            assert turnstile.holds_expired >= 1, "the stalled reader's turn ran out"
        finally:
            stalled.close()


def test_the_slots_are_configurable_and_zero_turns_the_turnstile_off(tmp_path: Path) -> None:
    config = load_origin_config(environ={"KRILL_ORIGIN_PIECE_BURST_SLOTS": "0"}, flags={})
    assert config.piece_burst_slots == 0
    assert load_origin_config(environ={}, flags={}).piece_burst_slots == pieceburst.DEFAULT_SLOTS
    with pytest.raises(ConfigError, match="piece_burst_slots"):
        load_origin_config(environ={"KRILL_ORIGIN_PIECE_BURST_SLOTS": "-1"}, flags={})
    app = web.Application()
    install_piece_claims(app, BlobStore(tmp_path / "store"), burst_slots=0)
    assert piece_turnstile(app) is None
    with pytest.raises(ValueError, match="at least one slot"):
        PieceTurnstile(0)


def test_the_origins_metrics_count_the_turns_and_those_that_ran_out(tmp_path: Path) -> None:
    base = {"data": tmp_path / "origin", "tracker": "http://127.0.0.1:1"}
    app = create_app(OriginConfig(**base))  # type: ignore[arg-type]
    turnstile = piece_turnstile(app)
    assert turnstile is not None
    turnstile.pieces_sent, turnstile.holds_expired = 7, 2
    text = app[METRICS].render().decode()
    assert "krill_origin_piece_turns_total 7.0" in text
    assert "krill_origin_piece_turns_expired_total 2.0" in text
    off = create_app(OriginConfig(**base, piece_burst_slots=0))  # type: ignore[arg-type]
    assert "krill_origin_piece_turns" not in off[METRICS].render().decode()
