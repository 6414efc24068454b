"""The node's side of restart points: a gzip member compressed in segments on threads.

Split from restarts.py (points, segments, the origin's proofs) to keep each
module short. ``SegmentedWriter`` runs any family's segments and joins their
bits; ``ParallelGoGzipWriter`` is Go's family (zlib's is in zlibrestarts.py).
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Generic

from krill.delta.restarts import (
    LOOKAHEAD,
    PARALLEL_LEVELS,
    RESTART_INTERVAL,
    P,
    RestartError,
    RestartPoint,
    Segment,
    SegmentBits,
    compress_segment,
    ends_where_planned,
    segments,
)
from krill.delta.segstream import SegmentChannel

# A segment's spans whose tokens come from the base: (p1, p2, tokens, tok_pos) (segreuse.py).
ReuseFor = Callable[[Segment[RestartPoint]], Sequence[tuple[int, int, bytes, int]]]

__all__ = ["ParallelGoGzipWriter", "ReuseFor", "SegmentedWriter", "StreamWork"]

# Tar a writer may hand out past the oldest unfinished segment (the output of the segments
# done meanwhile waits for it): while one worker compresses a long unproven stretch, the
# others go on with what follows it (issue 15: a 48 MB stretch left a core idle ~1.5 s).
AHEAD_BYTES = 48 << 20

# A streamed segment's work: its input as it comes, a callback for output as it goes.
StreamWork = Callable[[Iterator[memoryview], Callable[[bytes], None]], SegmentBits]


class _BitJoiner:
    """Segments in, stream bytes out: where two meet mid-byte, their bytes are ORed."""

    def __init__(self) -> None:
        self._tail: int | None = None  # the last, partial byte so far

    def join(self, bits: SegmentBits) -> bytes:
        data = bits.data
        if self._tail is not None:
            data = bytes([self._tail | data[0]]) + data[1:]
        if bits.nbits & 7:
            self._tail = data[-1]
            return data[:-1]
        self._tail = None
        return data

    def rest(self) -> bytes:
        """The last partial byte (its padding zero), when the last segment ended mid-byte."""
        tail, self._tail = self._tail, None
        return b"" if tail is None else bytes([tail])


class _TarWindow:
    """The tar received so far from some offset on, as the chunks that came (not copied)."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self.lo = 0  # offset of the first chunk
        self.end = 0  # bytes received

    def append(self, data: bytes) -> None:
        self._chunks.append(data)
        self.end += len(data)

    def read(self, lo: int, hi: int) -> bytes:
        """Bytes ``lo:hi`` (within what was received), copied once."""
        out, pos = [], self.lo
        for chunk in self._chunks:
            a, b = max(lo, pos), min(hi, pos + len(chunk))
            if a < b:
                out.append(memoryview(chunk)[a - pos : b - pos])
            pos += len(chunk)
        return b"".join(out)

    def forget_before(self, offset: int) -> None:
        while self._chunks and self.lo + len(self._chunks[0]) <= offset:
            self.lo += len(self._chunks.popleft())


class SegmentedWriter(Generic[P]):
    """A gzip member of the tar fed in, its segments compressed on ``workers`` threads.

    ``feed`` chunks, then ``finish``, as the sequential writers. A segment
    starts once its input (to its end plus ``lookahead``) has come; ``feed``
    waits for the oldest segment when ``workers`` are busy, so memory stays at
    a few segments. A segment longer than ``stream_min``, when the family can
    stream it (``_streamed``), starts once its window has come and is fed as
    the tar arrives (``krill/delta/segstream.py``): memory stays bounded
    however long the unproven stretch. With ``spill_dir`` its channel spills
    instead of making ``feed`` wait, and a new segment waits only for a free
    worker, not for the oldest: segments after a long one are compressed
    while it runs, up to ``AHEAD_BYTES`` of tar past it. A family says how a segment is
    compressed (``_compress``) and whether it ended where planned (``_fits``).
    """

    lookahead = LOOKAHEAD
    stream_min = 2 * RESTART_INTERVAL

    def __init__(
        self,
        header: bytes,
        points: Sequence[P],
        tar_size: int,
        workers: int,
        spill_dir: str | None = None,
    ) -> None:
        if points and points[-1].in_off >= tar_size:
            raise RestartError("a restart point lies past the end of the tar")
        self._tar_size = tar_size
        self._workers = max(1, workers)
        self._pending: deque[Segment[P]] = deque(segments(points))
        self._running: deque[tuple[Segment[P], Future[SegmentBits], SegmentChannel | None]] = (
            deque()
        )
        self._window = _TarWindow()
        self._joiner = _BitJoiner()
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="krill-gzip")
        self._header = header
        self._crc = 0
        self._spill_dir = spill_dir

    def _compress(self, segment: Segment[P], data: bytes) -> SegmentBits:
        """``data``: the tar over ``segment.input_range`` (shorter only for the last)."""
        raise NotImplementedError

    def _fits(self, segment: Segment[P], bits: SegmentBits) -> bool:
        raise NotImplementedError

    def _streamed(self, segment: Segment[P]) -> StreamWork:
        """``work(chunks, emit)`` compressing ``segment`` as its input comes (``chunks``),
        emitting its output as it goes; NotImplementedError: the family does not stream."""
        raise NotImplementedError

    def feed(self, data: bytes) -> bytes:
        self._crc = zlib.crc32(data, self._crc)
        self._window.append(data)
        self._push_streams()
        out = [self._take_header()]
        while self._pending and self._ready(self._pending[0]):
            out.extend(self._start(self._pending.popleft(), self._window.end))
        out.extend(self._drain())
        return b"".join(out)

    def finish(self) -> bytes:
        out = [self._take_header()]
        try:
            while self._pending:
                out.extend(self._start(self._pending.popleft(), self._window.end))
            for _segment, _future, channel in self._running:
                if channel is not None:
                    channel.close()
            while self._running:
                out.extend(self._collect())
            out.append(self._joiner.rest())
        finally:
            self.close()
        size = self._window.end & 0xFFFFFFFF
        out.append((self._crc & 0xFFFFFFFF).to_bytes(4, "little") + size.to_bytes(4, "little"))
        return b"".join(out)

    def close(self) -> None:
        """Stop the threads (after an error elsewhere; ``finish`` does it otherwise)."""
        for _segment, _future, channel in self._running:
            if channel is not None:
                channel.abort()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _take_header(self) -> bytes:
        header, self._header = self._header, b""
        return header

    def _streams(self, segment: Segment[P]) -> bool:
        lo, hi = segment.input_range(self._tar_size, self.lookahead)
        return hi - lo > self.stream_min and type(self)._streamed is not SegmentedWriter._streamed

    def _ready(self, segment: Segment[P]) -> bool:
        """Its whole input is here (the last segment waits for ``finish``); a streamed one's
        first byte is."""
        lo, hi = segment.input_range(self._tar_size, self.lookahead)
        if self._streams(segment):
            return lo < self._window.end
        return segment.stop is not None and hi <= self._window.end

    def _start(self, segment: Segment[P], received: int) -> Iterable[bytes]:
        """Hand a segment to a worker, first waiting for the oldest if all are busy."""
        done = self._make_room()
        lo, hi = segment.input_range(self._tar_size, self.lookahead)
        channel = None
        if self._streams(segment):
            channel = SegmentChannel(spill_dir=self._spill_dir)
            channel.fed_to = lo
            job = self._pool.submit(channel.run, self._streamed(segment))
        else:
            data = self._window.read(lo, min(hi, received))
            job = self._pool.submit(self._compress, segment, data)
        self._running.append((segment, job, channel))
        if channel is not None:
            self._push(segment, channel)
        self._forget()
        return done

    def _make_room(self) -> list[bytes]:
        """Wait for a free worker: the oldest segment's end (without a spill directory, as
        before) or any segment's (with one), then at most ``AHEAD_BYTES`` past the oldest."""
        out: list[bytes] = []
        while self._running:
            busy = [future for _s, future, _c in self._running if not future.done()]
            if self._spill_dir is None or self._ahead() > AHEAD_BYTES:
                if len(self._running) < self._workers:
                    break
                out.extend(self._collect())
            elif len(busy) >= self._workers:
                wait(busy, return_when=FIRST_COMPLETED)
                while self._running and self._running[0][1].done():  # no _forget: the
                    out.extend(self._collect())  # segment being started needs its window
            else:
                break
        return out

    def _ahead(self) -> int:
        """Tar handed out past the oldest running segment (its finished followers' output
        waits in memory until it ends)."""
        spans = (s.input_range(self._tar_size, self.lookahead) for s, _f, _c in self._running)
        next(spans, None)
        return sum(hi - lo for lo, hi in spans)

    def _push_streams(self) -> None:
        for segment, _future, channel in self._running:
            if channel is not None:
                self._push(segment, channel)

    def _push(self, segment: Segment[P], channel: SegmentChannel) -> None:
        """What has come of a streamed segment's input since the last push; closed at its end."""
        hi = segment.input_range(self._tar_size, self.lookahead)[1]
        upto = min(hi, self._window.end)
        if channel.fed_to < upto:
            channel.push(self._window.read(channel.fed_to, upto))
            channel.fed_to = upto
        if upto == hi and segment.stop is not None:
            channel.close()

    def _forget(self) -> None:
        """Drop the tar no pending segment and no stream still needs."""
        keep = [self._window.end]
        if self._pending:
            keep.append(self._pending[0].input_range(self._tar_size, self.lookahead)[0])
        keep += [c.fed_to for _s, _f, c in self._running if c is not None]
        self._window.forget_before(min(keep))

    def _drain(self) -> list[bytes]:
        """Finished segments joined, and what the oldest, if streamed, has emitted so far."""
        out: list[bytes] = []
        while self._running:
            _segment, future, channel = self._running[0]
            if future.done():
                out.extend(self._collect())
            elif channel is not None:
                out.extend(self._join_emitted(channel))
                break
            else:
                break
        self._forget()
        return out

    def _join_emitted(self, channel: SegmentChannel) -> list[bytes]:
        pieces = channel.take_emitted()
        return [self._joiner.join(SegmentBits(p, 8 * len(p), 0, True)) for p in pieces]

    def _collect(self) -> list[bytes]:
        segment, future, channel = self._running.popleft()
        bits = future.result()
        if not self._fits(segment, bits):
            raise RestartError(
                "a segment did not end at its restart point: the delta's restart points "
                "do not fit this tar"
            )
        emitted = self._join_emitted(channel) if channel is not None else []
        return [*emitted, self._joiner.join(bits)]


class ParallelGoGzipWriter(SegmentedWriter[RestartPoint]):
    """Go's gzip from proven restart points: same bytes as ``GoGzipWriter``."""

    def __init__(
        self,
        header: bytes,
        level: int,
        points: Sequence[RestartPoint],
        tar_size: int,
        workers: int,
        spill_dir: str | None = None,
        reuse: ReuseFor | None = None,
    ) -> None:
        """``reuse``: a segment's spans of the base's tokens (segreuse.segment_reuse)."""
        if level not in PARALLEL_LEVELS:
            raise RestartError(f"level {level} is compressed in sequence, not from restart points")
        self._level = level
        self._reuse = reuse
        super().__init__(header, points, tar_size, workers, spill_dir)

    def _compress(self, segment: Segment[RestartPoint], data: bytes) -> SegmentBits:
        reuse = self._reuse(segment) if self._reuse is not None else ()
        return compress_segment(self._level, segment, data, reuse)

    def _fits(self, segment: Segment[RestartPoint], bits: SegmentBits) -> bool:
        return ends_where_planned(segment, bits)
