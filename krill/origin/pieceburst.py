"""Claimed pieces leave the origin one burst at a time, so each is whole at its node sooner.

A herd's nodes each fetch their claimed pieces from the origin at once
(``origin.piececlaims``). Sent side by side, the origin's link carries every
node's stream at 1/N of its rate, so a piece takes N times as long to arrive
whole, and a node can offer nothing to its peers until its first piece is
whole (libtorrent checks and offers whole pieces only). At N = 16 and
100 Mbit/s a 128 KiB piece took ~0.18 s; the herd pays it at the start of a
pull, and again at the end, when the last pieces the origin sent must still
travel on.

``PieceTurnstile`` lets ``slots`` connections send at a time, one piece each:
a connection waits its turn (first come, first served), writes one piece,
waits until the kernel has put it on the wire, and queues again. Every
node's request stays open meanwhile, so each keeps its claim in hand and the
origin's link stays full; only the order of the bytes on it changes (a
serialised feed that made nodes wait to claim left the link idle: 2.1-2.4x,
docs/profile-agent.md).

"On the wire" is ``TCP_NOTSENT_LOWAT``: with it set, the socket turns
writable only once fewer than that many bytes are still unsent, so a wait
for writability after the piece is the wait for it to leave. A client that
reads slowly cannot hold a slot longer than ``max_hold`` seconds: the next
connection's turn then begins, and the slow piece goes on beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from krill.digests import Digest
from krill.origin.blobresponses import FALLBACK_CHUNK_SIZE, BlobFileResponse, stored_headers
from krill.origin.config import OriginConfig
from krill.sendfile import RawSocket, send_file_range, wait_writable

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SLOTS", "PieceBurstResponse", "PieceTurnstile"]

# Connections sending a piece at once (OriginConfig's default): each piece arrives in
# 4/N of the time it took side by side with N. Two left the link 10-15 % idle at
# handovers; three to eight measured alike (docs/profile-agent.md, "2026-12-07,
# 05:40-06:08 UTC").
DEFAULT_SLOTS: int = OriginConfig.piece_burst_slots
# Unsent bytes below which a socket counts as drained, and its slot passes on: the
# piece's tail still queued keeps the link busy while the next turn starts
# (16 KiB and 64 KiB measured alike; 64 KiB wakes the loop a quarter as often).
_NOTSENT_LOWAT = 64 << 10
# Longest a connection keeps its slot for one piece (a slow reader's piece goes on
# without it). Four 128 KiB pieces leave a 100 Mbit/s link in 44 ms.
_MAX_HOLD_SECONDS = 0.25
# TCP_NOTSENT_LOWAT is 25 on Linux; Python names it from 3.12 on.
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


class PieceTurnstile:
    """Lets ``slots`` connections send a piece at a time, in the order they asked."""

    def __init__(self, slots: int = DEFAULT_SLOTS, max_hold: float = _MAX_HOLD_SECONDS) -> None:
        if slots < 1:
            raise ValueError(f"a piece turnstile needs at least one slot, got {slots}")
        self.max_hold = max_hold
        self._turns = asyncio.Semaphore(slots)
        self.pieces_sent = 0  # tests, benchmarks
        self.holds_expired = 0  # pieces a slow reader kept past max_hold

    async def send(self, raw: RawSocket, file_fd: int, offset: int, count: int, piece: int) -> None:
        """Send ``count`` bytes from ``offset``, each ``piece``-byte run in its own turn."""
        waiter = os.dup(raw.fd)  # asyncio will not watch the transport's own descriptor
        try:
            with _notsent_lowat(raw.fd):
                end = offset + count
                while offset < end:
                    length = min(piece - offset % piece, end - offset)  # to the next boundary
                    await self._send_piece(raw, waiter, file_fd, offset, length)
                    offset += length
        finally:
            os.close(waiter)

    async def _send_piece(
        self, raw: RawSocket, waiter: int, file_fd: int, offset: int, length: int
    ) -> None:
        await self._turns.acquire()
        turn = _Turn(self._turns)
        # The slot passes on after max_hold even while this piece is still going out:
        # the send itself is never cut short (its bytes must all go, in order).
        expiry = asyncio.get_running_loop().call_later(self.max_hold, self._expire, turn)
        try:
            await send_file_range(raw, file_fd, offset, length)
            await wait_writable(waiter)  # fewer than _NOTSENT_LOWAT bytes left unsent
            self.pieces_sent += 1
        finally:
            expiry.cancel()
            turn.end()

    def _expire(self, turn: _Turn) -> None:
        if turn.end():
            self.holds_expired += 1
            log.debug("origin.piece_burst_hold_expired max_hold=%s", self.max_hold)


class _Turn:
    """One connection's hold on a slot, given back once (on time or when it expires)."""

    def __init__(self, turns: asyncio.Semaphore) -> None:
        self._turns = turns
        self._held = True

    def end(self) -> bool:
        """Give the slot back; False if it was given back already."""
        if not self._held:
            return False
        self._held = False
        self._turns.release()
        return True


@contextlib.contextmanager
def _notsent_lowat(fd: int) -> Iterator[None]:
    """``TCP_NOTSENT_LOWAT`` on the connection while a response is sent, then as it was."""
    sock = socket.socket(fileno=fd)
    try:
        try:
            before = sock.getsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT)
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, _NOTSENT_LOWAT)
        except OSError as exc:  # not TCP (served on a Unix socket): turns without the wait
            log.debug("origin.piece_burst_no_lowat error=%s", exc)
            yield
            return
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, before)
    finally:
        sock.detach()  # the transport owns the descriptor


class PieceBurstResponse(BlobFileResponse):
    """A stored blob's claimed pieces, sent through the origin's ``PieceTurnstile``.

    Only the body's pacing differs from any stored blob's answer: headers,
    ``Range`` and the TLS fallback (no raw socket, no turns) are the parent's.
    """

    def __init__(self, path: Path, digest: Digest, turnstile: PieceTurnstile, piece: int) -> None:
        super().__init__(path, chunk_size=FALLBACK_CHUNK_SIZE, headers=stored_headers(digest))
        self._turnstile = turnstile
        self._piece = piece

    async def _send_body(self, raw: RawSocket, file_fd: int, offset: int, count: int) -> None:
        await self._turnstile.send(raw, file_fd, offset, count, self._piece)
