"""Long segments streamed into their worker: memory bounded whatever a segment's length.

A segment is normally compressed once its whole input has come (its tar is
held, then copied once for the worker). On binary-heavy layers many restart
points fail their proof and segments merge: on a 415 MB layer of seven wheels
one ran 71 MB, and holding it (twice, with the copy) put the node's peak RSS
at 345 MB against a limit of 258 MB. A long segment is instead started as
soon as its window has come and fed as the tar arrives, through a channel that
holds at most ``STREAM_BUFFER`` bytes (``feed`` waits while it is full); its
worker hands its output back as it goes, so when it is the oldest segment the
writer passes those bytes straight on. What the worker holds is the
compressor's state, the channel and the few KiB after the stop it checks.

A channel that is full does not make ``feed`` wait when it has somewhere to
spill (``spill_dir``): what does not fit goes to an unlinked temp file, read back
by the worker in order. The writer then runs ahead of a long unproven stretch
and the other workers compress the segments after it meanwhile; waiting there
left one core idle for most of a 48 MB stretch (issue 15). Memory stays the
channel's bound; the disk holds at most the stretch.

Compression is the same calls on the same bytes, only cut differently, and
zlib's output with no flush does not depend on how its input is cut, so the
bits are the sequential run's (tests/test_delta_segstream.py checks it).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar

__all__ = ["STREAM_BUFFER", "ChannelAborted", "SegmentChannel", "ShiftedEmitter"]

T = TypeVar("T")

# Tar bytes a streamed segment's channel holds before ``feed`` waits for its worker.
STREAM_BUFFER = 4 << 20
# Pieces pushed into a channel (a large chunk is cut, so the bound holds within a piece).
_PIECE = 1 << 20
# Output handed back at least this much at a time (fewer, larger shifts).
_EMIT_MIN = 256 << 10
# Bytes shifted as one integer.
_SHIFT = 64 << 10


class ChannelAborted(RuntimeError):
    """The writer stopped (an error elsewhere) while a worker waited for input."""


class _Spilled:
    """A piece of input written to the spill file at ``offset``, ``size`` bytes long."""

    __slots__ = ("offset", "size")

    def __init__(self, offset: int, size: int) -> None:
        self.offset = offset
        self.size = size


class SegmentChannel:
    """Tar bytes from the writer to a worker (bounded in memory), output bytes back.

    ``spill_dir``: where input that does not fit goes instead of making ``push``
    wait (None: ``push`` waits for the worker, the bound holds either way).
    """

    def __init__(self, limit: int = STREAM_BUFFER, spill_dir: str | None = None) -> None:
        self._cond = threading.Condition()
        self._chunks: deque[memoryview | _Spilled] = deque()
        self._spill_dir = spill_dir
        self._spill: BinaryIO | None = None
        self._spill_end = 0
        self.spilled = 0  # bytes that went to the spill file (tests, logs)
        self._held = 0
        self._limit = limit
        self._closed = False
        self._aborted = False
        self._out: deque[bytes] = deque()
        self.fed_to = 0  # the writer's bookkeeping: absolute tar offset pushed so far
        self.peak = 0  # most bytes held at once (tests check the bound)

    def push(self, data: bytes) -> None:
        """Hand bytes to the worker, waiting while the channel is full (never if aborted)."""
        view = memoryview(data)
        for at in range(0, len(view), _PIECE):
            piece = view[at : at + _PIECE]  # a view: the pushed buffer is not copied again
            with self._cond:
                if self._spill_dir is None:
                    self._cond.wait_for(lambda: self._held < self._limit or self._aborted)
                if self._aborted:
                    return
                if self._held < self._limit:
                    self._chunks.append(piece)
                    self._held += len(piece)
                    self.peak = max(self.peak, self._held)
                else:
                    self._chunks.append(self._spill_piece(piece))
                self._cond.notify_all()

    def _spill_piece(self, piece: memoryview) -> _Spilled:
        """Write ``piece`` at the spill file's end (under the lock: the worker reads in order)."""
        if self._spill is None:
            self._spill = tempfile.TemporaryFile(dir=self._spill_dir, prefix=".krill-spill-")
        spilled = _Spilled(self._spill_end, len(piece))
        os.pwrite(self._spill.fileno(), piece, self._spill_end)
        self._spill_end += len(piece)
        self.spilled += len(piece)
        return spilled

    def _read_spilled(self, piece: _Spilled) -> memoryview:
        assert self._spill is not None, "a spilled piece without a spill file"
        data = os.pread(self._spill.fileno(), piece.size, piece.offset)
        if len(data) != piece.size:
            raise OSError(f"spill file short: {len(data)} of {piece.size} bytes read back")
        return memoryview(data)

    def _drop_spill(self) -> None:
        with self._cond:
            spill, self._spill = self._spill, None
        if spill is not None:
            spill.close()

    def close(self) -> None:
        """No more input: the worker finishes once it has taken what is here."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        """Stop both sides: the worker's read fails, pushes return at once."""
        with self._cond:
            self._aborted = True
            self._chunks.clear()
            self._held = 0
            self._cond.notify_all()
        self._drop_spill()

    def chunks(self) -> Iterator[memoryview]:
        """The worker's side: the input as it comes, until ``close`` (ChannelAborted if aborted)."""
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._chunks or self._closed or self._aborted)
                    if self._aborted:
                        raise ChannelAborted("segment stream aborted")
                    if not self._chunks:
                        return
                    item = self._chunks.popleft()
                    if isinstance(item, memoryview):
                        self._held -= len(item)
                        chunk = item
                    else:  # read under the lock: ``abort`` may close the file meanwhile
                        chunk = self._read_spilled(item)
                    self._cond.notify_all()
                yield chunk
        finally:
            self._drop_spill()

    def emit(self, data: bytes) -> None:
        """The worker's side: output bytes ready for the stream (whole bytes, in order)."""
        if data:
            with self._cond:
                self._out.append(data)

    def take_emitted(self) -> list[bytes]:
        """The writer's side: the output emitted since the last call."""
        with self._cond:
            out = list(self._out)
            self._out.clear()
        return out

    def run(self, work: Callable[[Iterator[memoryview], Callable[[bytes], None]], T]) -> T:
        """``work(chunks, emit)`` in a worker; on failure the writer's pushes stop waiting."""
        try:
            return work(self.chunks(), self.emit)
        except BaseException:
            self.abort()
            raise


class ShiftedEmitter:
    """A segment's compressed output shifted ``lead`` bits up, emitted in whole bytes as it
    comes, never past byte ``limit`` of the unshifted output (the rest is kept for the
    end-of-segment check)."""

    def __init__(self, lead: int, limit: int, emit: Callable[[bytes], None]) -> None:
        self._lead = lead
        self._limit = limit
        self._emit = emit
        self._carry = 0  # the top ``lead`` bits of the last byte emitted
        self.pending = bytearray()  # output not yet emitted
        self.consumed = 0  # output bytes emitted (unshifted count)

    def add(self, data: bytes) -> None:
        self.pending += data
        n = min(len(self.pending), self._limit - self.consumed)
        if n >= _EMIT_MIN:
            self._emit(self._shift(bytes(self.pending[:n])))
            del self.pending[:n]
            self.consumed += n

    @property
    def total(self) -> int:
        """Output bytes so far, emitted or not."""
        return self.consumed + len(self.pending)

    def final(self, nbits: int) -> tuple[bytes, int, int]:
        """The rest up to bit ``nbits`` of the unshifted output, as the segment's last bits:
        (data, its length in bits, lead bits of the previous segment in its first byte)."""
        rest = nbits - self.consumed * 8
        value = int.from_bytes(self.pending[: (rest + 7) >> 3], "little") & ((1 << rest) - 1)
        value = (value << self._lead) | self._carry
        width = self._lead + rest
        lead = self._lead if not self.consumed else 0
        return value.to_bytes((width + 7) >> 3, "little"), width, lead

    def _shift(self, piece: bytes) -> bytes:
        """Shifted in slices: a Python int of a whole piece would cost several copies of it."""
        if not self._lead:
            return piece
        return b"".join(
            self._shift_slice(piece[at : at + _SHIFT]) for at in range(0, len(piece), _SHIFT)
        )

    def _shift_slice(self, piece: bytes) -> bytes:
        width = len(piece) * 8
        value = (int.from_bytes(piece, "little") << self._lead) | self._carry
        self._carry = value >> width
        return (value & ((1 << width) - 1)).to_bytes(len(piece), "little")
