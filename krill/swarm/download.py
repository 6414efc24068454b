"""One blob on its way through the swarm, shared by every caller asking for it.

A ``Download`` owns everything known about its pieces: which passed their
hash check, which are known to be in the file (``available``, the streaming
prefix), which the origin feed handed to libtorrent, and the blob's sha256
hashed as its prefix lands. Its state changes only through its own methods:
the engine reports alerts to it (``piece_verified``, ``flushed``), and the
download reaches back only through the narrow ``DownloadControl`` the engine
hands it (piece deadlines for a waiting reader, and its own cancellation).

Why ``available`` lags the hash checks: libtorrent posts ``piece_finished``
before a piece has necessarily left its write cache (a reader of the file
then sees zeros; measured), so a piece counts as readable once a
``flush_cache`` begun after its check has completed (``flush_started`` and
``flushed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from krill.clock import SYSTEM_CLOCK, Clock
from krill.digests import Digest
from krill.metainfo import piece_count
from krill.prefixdigest import PrefixDigest
from krill.writeback import start_writeback

__all__ = ["Download", "DownloadControl", "DownloadFailed", "Spawn"]

log = logging.getLogger("krill.swarm")  # the engine's log lines keep one logger name

# At most this often per download, libtorrent is asked to write its cache out for a
# streaming reader (each flush also closes the torrent's file handles, and wakes the
# reader to send what it made available). The reader's lag costs a pull nothing: it
# leaves by sendfile at loopback speed once the last piece is in (0.05 s here, with
# the pump's batches, cost 0.8 CPU-s per GiB more: pump._MIN_ALERT_BATCH_SECONDS).
_MIN_FLUSH_INTERVAL = 0.25
# The digest task needs the prefix in the file soon, not at once: each flush makes
# libtorrent close and reopen the file.
_DIGEST_FLUSH_INTERVAL = 0.25
# A waiting reader's next pieces get deadlines only once the streaming prefix has
# stood still this long with its next piece not yet verified (``steer_if_starved``).
# Deadlines for every waiting reader at once made a herd fetch in file order: at
# N=16 (scripts/bench-herd --nodes 16 --mtu 1500) p50 1.28-1.30x with them against
# 1.24-1.28x without, five alternated pairs, first byte no later
# (docs/profile-agent.md, 2026-12-06). A reader whose prefix stalls (a lone node,
# pieces arriving rarest first) still gets them, a second late.
_STEER_AFTER_SECONDS = 1.0
# Hashed per worker-thread call (~8 ms of one CPU): bounds how long a cancelled
# download's or a stopping engine's digest thread runs on.
_DIGEST_STRETCH = 16 * 1024 * 1024

# Starts a task the engine keeps track of (and cancels when it stops).
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class DownloadFailed(Exception):
    """The blob could not be fetched and verified; nothing was published."""


class DownloadControl(Protocol):
    """What a download asks of the engine running it."""

    def set_deadlines(self, deadlines: list[tuple[int, int]]) -> bool:
        """Give pieces deadlines, ``(index, milliseconds)``; False if the torrent is gone."""
        ...

    def cancelled(self, download: Download) -> None:
        """``download`` was cancelled: stop its torrent and remove its data."""
        ...


class Download:
    """One blob being fetched through the swarm (shared by every caller asking for it)."""

    def __init__(
        self,
        digest: Digest,
        size: int,
        piece_length: int,
        partial_path: Path,
        *,
        clock: Clock = SYSTEM_CLOCK,
        stream_window: int = 16,
        control: DownloadControl | None = None,
    ) -> None:
        self.digest = digest
        self.size = size
        self.piece_length = piece_length
        self.partial_path = partial_path
        self.store_path: Path | None = None
        self.available = 0
        # Bytes hashed while the pieces were still arriving; publishing hashed the rest.
        self.hashed_early = 0
        self._clock = clock
        self._window = stream_window
        self._control = control
        self._num_pieces = max(1, piece_count(size, piece_length))  # arrays: >= 1
        # Pieces that passed their hash (piece_finished_alert); see the module doc for
        # why ``available`` covers only those verified before a completed flush.
        self._verified = bytearray(self._num_pieces)
        self._verified_count = 0
        self._last_progress = clock.monotonic()  # when a piece last passed its check
        # Pieces handed to libtorrent from the origin feed and not yet verified (or
        # failed): not to be fetched again while libtorrent checks them.
        self._fed = bytearray(self._num_pieces)
        self._in_file = bytearray(self._num_pieces)
        self._flush_snapshot: bytes | None = None  # _verified when the pending flush began
        self._last_flush = -math.inf
        self._readers = 0  # callers inside wait_available: they need flushes
        # The blob's sha256, hashed as its prefix lands in the file (krill.prefixdigest),
        # by the digest task; it too waits for flushes, less eagerly.
        self._prefix_digest = PrefixDigest(partial_path)
        self._digest_waiting = False
        self._digesting: asyncio.Task[None] | None = None
        self._next_missing = 0
        self._progress = asyncio.Event()
        self._done: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        self._done.add_done_callback(_consume_exception)
        self._deadlined_until = 0
        self._prefix_moved_at = clock.monotonic()  # when ``available`` last grew
        self._starved = False  # readers' next piece stalled: deadlines are being set
        self._publishing = False

    @classmethod
    def finished(cls, digest: Digest, path: Path, piece_length: int) -> Download:
        """A download that is already complete (the blob was in the store)."""
        done = cls(digest, path.stat().st_size, piece_length, path)
        done.finish(path)
        return done

    # ---- for callers ----

    @property
    def done(self) -> bool:
        return self._done.done()

    @property
    def num_pieces(self) -> int:
        return self._num_pieces

    @property
    def verified_pieces(self) -> int:
        """Pieces that have passed their hash check so far."""
        return self._verified_count

    @property
    def hashed_bytes(self) -> int:
        """Bytes of the blob's sha256 hashed so far (its prefix, as it lands)."""
        return self._prefix_digest.offset

    async def wait_available(self, offset: int) -> int:
        """Wait until more than ``offset`` verified bytes exist (or the blob is complete).

        Returns ``available``. Raises DownloadFailed if the download fails.
        """
        while self.available <= offset and not self._done.done():
            event = self._progress
            self._readers += 1
            try:
                await event.wait()
            finally:
                self._readers -= 1
        self._raise_failure()
        return self.available

    async def wait_done(self) -> Path:
        """Wait until the blob is verified and in the store; return its store path."""
        return await asyncio.shield(self._done)

    def open(self) -> BinaryIO:
        """Open the data for reading: the store file once published, else the partial file.

        Keep the returned file open while streaming: the partial file is moved into
        the store when the download completes, and an open file follows the move.
        """
        for path in (self.store_path, self.partial_path, self.store_path):
            if path is None:
                continue
            with contextlib.suppress(FileNotFoundError):
                return open(path, "rb")
        self._raise_failure()
        raise DownloadFailed(f"data of {self.digest} is neither being written nor stored")

    def cancel(self) -> None:
        """Stop the download for every caller sharing it; waiters get DownloadFailed.

        Once every piece has arrived and the file is being verified and published,
        cancelling does nothing: the blob is about to be in the store.
        """
        if self._done.done() or self._publishing:
            return
        self.fail(DownloadFailed(f"download of {self.digest} was cancelled"))
        if self._control is not None:
            self._control.cancelled(self)

    # ---- pieces, as the engine and the origin feed learn of them ----

    @property
    def all_verified(self) -> bool:
        return self._verified_count >= self._num_pieces

    @property
    def pieces_left(self) -> int:
        return self._num_pieces - self._verified_count

    @property
    def last_progress(self) -> float:
        """When (on the engine's clock) a piece last passed its check."""
        return self._last_progress

    @property
    def has_readers(self) -> bool:
        return self._readers > 0

    @property
    def publishing(self) -> bool:
        """Every piece is here and the blob is being verified and published."""
        return self._publishing

    def piece_verified(self, index: int) -> None:
        if 0 <= index < self._num_pieces and not self._verified[index]:
            self._verified[index] = 1
            self._verified_count += 1
            self._last_progress = self._clock.monotonic()

    def has_all(self, pieces: Iterable[int]) -> bool:
        verified = self._verified
        return all(verified[index] for index in pieces)

    def needed(self, pieces: Iterable[int]) -> list[int]:
        """Those of ``pieces`` neither verified nor handed to libtorrent by the feed."""
        verified, fed = self._verified, self._fed
        return [index for index in pieces if not verified[index] and not fed[index]]

    def fed(self, index: int) -> None:
        """The origin feed handed piece ``index`` to libtorrent."""
        self._fed[index] = 1

    def refeed(self, index: int) -> None:
        """A piece failed its hash check: the feed may fetch it again."""
        if 0 <= index < self._num_pieces:
            self._fed[index] = 0

    def forget_unverified_feed(self) -> None:
        """Fed pieces libtorrent never verified (it may have dropped them) may be fed again."""
        for index, fed in enumerate(self._fed):
            if fed and not self._verified[index]:
                self._fed[index] = 0

    def deadlines_dropped(self, first: int) -> None:
        """Pieces from ``first`` on lost their deadlines (priority 0 drops them): set again."""
        self._deadlined_until = min(self._deadlined_until, first)

    def steer_if_starved(self, now: float) -> None:
        """Give the pieces at the prefix's end deadlines once readers have waited
        ``_STEER_AFTER_SECONDS`` on a piece that has not arrived (the engine asks
        between alert batches).

        Not sooner: with deadlines from the first wait, every node of a herd fetched
        the same few pieces in file order instead of rarest first, and pulled slower
        (see ``_STEER_AFTER_SECONDS``). A prefix that keeps growing needs none.
        """
        if (
            self._readers == 0
            or self._next_missing >= self._num_pieces
            or self._verified[self._next_missing]  # here: only a flush away
            or now - self._prefix_moved_at < _STEER_AFTER_SECONDS
        ):
            return
        if not self._starved:
            self._starved = True
            log.info(
                "swarm.reader_starved digest=%s piece=%d stalled=%.1fs",
                self.digest, self._next_missing, now - self._prefix_moved_at,
            )
        self._steer_towards(self._next_missing * self.piece_length)

    def _steer_towards(self, offset: int) -> None:
        """Give the pieces just ahead of a streaming reader deadlines (soonest first)."""
        if self._control is None:
            return
        first = offset // self.piece_length
        last = min(self._num_pieces, first + self._window)
        start = max(first, self._deadlined_until)
        if start >= last:
            return
        deadlines = [
            (index, 100 * (index - first))
            for index in range(start, last)
            if not self._verified[index]
        ]
        if self._control.set_deadlines(deadlines):
            self._deadlined_until = last

    # ---- the file: flushes, the streaming prefix, the digest ----

    def wants_flush(self, now: float) -> bool:
        """A reader or the digest task waits for a piece that is verified but maybe not
        yet in the file (a reader is served within _MIN_FLUSH_INTERVAL, the digest
        within _DIGEST_FLUSH_INTERVAL: each flush makes libtorrent reopen the file)."""
        if self._readers > 0:
            interval = _MIN_FLUSH_INTERVAL
        elif self._digest_waiting:
            interval = _DIGEST_FLUSH_INTERVAL
        else:
            return False
        return (
            self._flush_snapshot is None
            and self._next_missing < self._num_pieces
            and bool(self._verified[self._next_missing])
            and now - self._last_flush >= interval
        )

    def flush_started(self, now: float) -> None:
        self._flush_snapshot = bytes(self._verified)
        self._last_flush = now

    def flushed(self) -> None:
        """libtorrent wrote its cache: every piece verified before the flush is in the file."""
        snapshot, self._flush_snapshot = self._flush_snapshot, None
        if snapshot is None:
            return
        for index, verified in enumerate(snapshot):
            if verified:
                self._in_file[index] = 1
        start = self._next_missing
        while self._next_missing < self._num_pieces and self._in_file[self._next_missing]:
            self._next_missing += 1
        if self._next_missing == start:
            return
        available = min(self.size, self._next_missing * self.piece_length)
        if available != self.available:
            self.available = available
            self._prefix_moved_at = self._clock.monotonic()
            self._starved = False
            self._wake()

    def start_digest(self, spawn: Spawn, write_back: bool) -> None:
        """Hash the blob's prefix as it lands in the file, in a task ``spawn`` starts.

        With ``write_back`` the kernel is asked to start writing each hashed stretch
        to disk (``krill.writeback``), so a durable publish's fsync finds little left.
        """
        if self.size > 0:
            self._digesting = spawn(self._digest_arriving(write_back))

    async def _digest_arriving(self, write_back: bool) -> None:
        """Hash the prefix as it lands in the file, so publishing hashes only the tail.

        Each stretch is hashed on a copy in a worker thread, at most
        ``_DIGEST_STRETCH`` bytes at a time, and the copy installed here on the
        loop: a cancelled task's thread (it cannot be stopped) never touches
        the digest that publishing reads, and stops after one stretch.
        """
        while not self.done and not self._publishing:
            offset = self._prefix_digest.offset
            available = await self._wait_in_file(offset)
            if self.done or self._publishing:
                return
            end = min(available, offset + _DIGEST_STRETCH)
            try:
                self._prefix_digest = await asyncio.to_thread(
                    _hashed_further, self._prefix_digest.copy(), end, write_back
                )
            except OSError as exc:  # a cancelled download's file is removed; publish hashes all
                if not self.done:
                    log.warning("swarm.digest_failed digest=%s error=%s", self.digest, exc)
                return

    async def _wait_in_file(self, offset: int) -> int:
        """For the digest task: wait until more than ``offset`` bytes are in the file.

        Unlike ``wait_available`` it sets no piece deadlines (the digest follows the
        swarm's order, it does not steer it) and returns as soon as publishing begins.
        """
        while self.available <= offset and not self._done.done() and not self._publishing:
            event = self._progress
            self._digest_waiting = True
            try:
                await event.wait()
            finally:
                self._digest_waiting = False
        return self.available

    # ---- the end: published or failed ----

    def begin_publishing(self) -> bool:
        """Every piece is here: past cancelling from now on. False if already begun or over."""
        if self._publishing or self.done:
            return False
        self._publishing = True
        self._wake()  # the digest task stops waiting for more of the file
        return True

    def written_out(self) -> None:
        """Publishing: libtorrent closed the files of a torrent whose every piece passed
        its check, so the whole file is readable (the blob's digest is still to come)."""
        if self._publishing and not self.done and self.available < self.size:
            self.available = self.size
            self._wake()

    async def hashed_prefix(self) -> PrefixDigest:
        """The prefix digest for publishing, once the digest task has finished the
        stretch it is hashing; records ``hashed_early``."""
        if self._digesting is not None:
            await asyncio.wait({self._digesting})
        self.hashed_early = self._prefix_digest.offset
        return self._prefix_digest

    def finish(self, store_path: Path) -> None:
        self.store_path = store_path
        self.available = self.size
        if not self._done.done():
            self._done.set_result(store_path)
        self._wake()

    def fail(self, exc: DownloadFailed) -> None:
        if not self._done.done():
            self._done.set_exception(exc)
        self._wake()

    def _raise_failure(self) -> None:
        if self._done.done():
            failure = self._done.exception()
            if failure is not None:
                raise failure

    def _wake(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()


def _hashed_further(prefix: PrefixDigest, end: int, write_back: bool) -> PrefixDigest:
    """``prefix`` hashed up to ``end``; with ``write_back`` the kernel starts writing
    that much to disk (so the fsync at publishing finds little left to write)."""
    prefix.advance(end)
    if write_back:
        start_writeback(prefix.path, prefix.offset)
    return prefix


def _consume_exception(future: asyncio.Future[Path]) -> None:
    """Mark a failure as seen, so a download nobody awaited does not log 'never retrieved'."""
    if not future.cancelled():
        future.exception()
