"""Restart points: Go-made gzip recompressed on every core, still bit for bit.

Recompression is most of a node's rebuild (Go level 6 runs at 25-36 MB/s on
one core here) and deflate is a single stream, so cores only help if the
stream can be cut. At Go's levels 4-9 every position is hashed
(``fastSkipHashing == skipNever``), so at a block boundary the matcher holds
nothing the input before it does not determine, except a few numbers: the
window's offset (it slides at points the input fixes), the pending lazy
literal and its match, and the output's bit position. The origin's sequential
run (recipe detection) records them about every ``RESTART_INTERVAL`` bytes of
tar, and *proves* each one by compressing the segment from it and comparing
with the blob's bits (``prove_restarts``); a point whose segment differs is
dropped and its segment merged into the one before. The node compresses the
segments in threads (``krill._goflate.segment`` releases the GIL) and joins
them: each segment is written at its bit position within its first byte, so
joining is one OR of the byte where two segments meet.

Levels 1-3 stay sequential: level 1's table and levels 2-3's hash chains
depend on where earlier matches ended (positions inside long matches are not
hashed), which the preceding window does not determine.

Memory on the node: at most ``workers`` segments in flight plus the one being
gathered, each ``RESTART_INTERVAL + LOOKAHEAD`` bytes of tar and its
compressed output, about 3 x 4.1 MiB + 3 x 1.5 MiB with 2 workers.
"""

from __future__ import annotations

import bisect
import importlib
import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

__all__ = [
    "LOOKAHEAD",
    "MAX_RESTARTS",
    "PARALLEL_LEVELS",
    "RESTART_INTERVAL",
    "TAIL_MIN",
    "Proof",
    "RestartError",
    "RestartPoint",
    "Segment",
    "SegmentBits",
    "parse_restarts",
    "prove_points",
    "prove_restarts",
    "same_bits",
    "segment_end",
    "segments",
    "thin_points",
]

# Levels whose matcher state at a block boundary follows from the preceding window.
PARALLEL_LEVELS = frozenset(range(4, 10))
# 4 MiB: a 60 MB layer still makes 14 segments, so 2 workers finish within a segment of each
# other; each costs 32 KiB of re-hashing and a 27-byte entry in the recipe.
RESTART_INTERVAL = 4 << 20
# The shortest segment the origin plans near the tar's end (``segment_end``).
TAIL_MIN = 512 << 10
# Input a segment's encoder may need past its end: its window (64 KiB) may start up to one
# byte after the last block's end. Two windows, to spare the arithmetic.
LOOKAHEAD = 2 << 16
# A recipe lists at most this many (4 MiB apart: a 256 GiB layer); the header stays < 1 MiB.
MAX_RESTARTS = 1 << 16
_WINDOW = 1 << 16
_MAX_MATCH = 258
_MAX_OFFSET = 1 << 15


class RestartError(ValueError):
    """A recipe's restart points are malformed, or a segment did not end where it should."""


def _native() -> Any:
    """krill._goflate, built by setup.py (recipes check gogzip.missing_reason() first)."""
    return importlib.import_module("krill._goflate")


@dataclass(frozen=True, slots=True)
class RestartPoint:
    """A block boundary of the sequential stream and the matcher state a restart needs.

    ``in_off``/``bit_off``: where the block ends in the tar and in the deflate
    stream; ``win``: ``in_off`` minus the window's input offset; ``avail``,
    ``length``, ``offset``: the pending lazy literal and the match found at it.
    """

    in_off: int
    bit_off: int
    win: int
    avail: int
    length: int
    offset: int

    @property
    def base(self) -> int:
        """The tar offset of the window a restarted encoder starts with."""
        return self.in_off - self.win

    def start(self) -> tuple[int, int, int, int, int]:
        """The state as ``krill._goflate.segment`` takes it (lead bits: ``bit_off % 8``)."""
        return (self.win, self.avail, self.length, self.offset, self.bit_off & 7)

    def to_json(self) -> list[int]:
        return [self.in_off, self.bit_off, self.win, self.avail, self.length, self.offset]


def parse_restarts(value: object) -> tuple[RestartPoint, ...]:
    """Restart points from a recipe's JSON, checked for shape and order (RestartError if not).

    The values a Go matcher can hold are checked again in C before use; a
    well-formed point that is simply wrong makes a wrong blob, which the
    digest check refuses.
    """
    if not isinstance(value, list) or len(value) > MAX_RESTARTS:
        raise RestartError(f"restarts must be a list of at most {MAX_RESTARTS} points")
    points = tuple(_parse_point(item) for item in value)
    for before, after in itertools.pairwise(points):
        if after.in_off <= before.in_off or after.bit_off <= before.bit_off:
            raise RestartError("restart points must be in increasing order")
        if after.base < before.base:
            raise RestartError("a restart point's window starts before the previous one's")
    return points


def _parse_point(item: object) -> RestartPoint:
    if not isinstance(item, list) or len(item) != 6:
        raise RestartError("a restart point is [in_off, bit_off, win, avail, length, offset]")
    if not all(type(v) is int for v in item):  # bool is an int subclass: refuse it too
        raise RestartError("restart point fields must be integers")
    point = RestartPoint(*item)
    in_range = (
        0 <= point.win <= min(point.in_off, _WINDOW)
        and 0 < point.in_off < 1 << 50
        and 0 < point.bit_off < 1 << 53
        and point.avail in (0, 1)
        and 3 <= point.length <= _MAX_MATCH
        and 0 <= point.offset <= _MAX_OFFSET
    )
    if not in_range:
        raise RestartError(f"restart point {item} is out of range")
    return point


class Point(Protocol):
    """What segments, proofs and the parallel writer need of any family's restart point."""

    @property
    def in_off(self) -> int: ...
    @property
    def bit_off(self) -> int: ...
    @property
    def base(self) -> int: ...


P = TypeVar("P", bound=Point)


@dataclass(frozen=True, slots=True)
class Segment(Generic[P]):
    """The stream between two restart points (None: its beginning, its end)."""

    start: P | None
    stop: P | None

    def input_range(self, tar_size: int, lookahead: int = LOOKAHEAD) -> tuple[int, int]:
        """The tar bytes its encoder reads: its window's start to its end plus lookahead."""
        lo = self.start.base if self.start else 0
        hi = tar_size if self.stop is None else min(tar_size, self.stop.in_off + lookahead)
        return lo, hi

    @property
    def byte_off(self) -> int:
        """Where its first byte is in the deflate stream."""
        return self.start.bit_off >> 3 if self.start else 0


def segment_end(start: int, tar_size: int, every: int = RESTART_INTERVAL) -> int:
    """Where the origin aims to end the segment that starts at tar offset ``start``.

    ``every`` bytes on, but never more than half of what is left of the tar
    (nor less than ``TAIL_MIN``): segments shrink toward the end. A node can
    start a segment only once the tar up to its end has been rebuilt, so the
    last ones all start as the rebuild ends, and the last runs on one core
    while the others have nothing left to do: a 4 MiB one kept one of two
    cores idle ~60-90 ms of a 0.85 s apply (pandas, Go level 6). Halving
    toward the end leaves a few small segments there, which the workers
    share; it costs 3-4 more points (32 KiB of re-hashing each).
    """
    return start + min(every, max(TAIL_MIN, (tar_size - start) // 2))


def thin_points(points: Sequence[P], tar_size: int, every: int = RESTART_INTERVAL) -> list[P]:
    """Of points recorded closer together (in order), the one nearest each ``segment_end``:
    segments about ``every`` long that shrink toward the tar's end."""
    offsets = [point.in_off for point in points]
    kept: list[P] = []
    start, first = 0, 0  # the last kept point's offset, the index after it
    while first < len(points):
        aim = segment_end(start, tar_size, every)
        if aim >= tar_size:
            break
        i = bisect.bisect_left(offsets, aim, first)
        near = min(
            (j for j in (i - 1, i) if first <= j < len(points)),
            key=lambda j: abs(offsets[j] - aim),
        )
        kept.append(points[near])
        start, first = offsets[near], near + 1
    return kept


def segments(points: Sequence[P]) -> list[Segment[P]]:
    bounds: list[P | None] = [None, *points, None]
    return [Segment(a, b) for a, b in itertools.pairwise(bounds)]


@dataclass(frozen=True, slots=True)
class SegmentBits:
    """A segment's output: ``data[0]`` is the stream's byte ``byte_off``; ``nbits`` counts
    from that byte's bit 0 (the previous segment's bits in it are zero here)."""

    data: bytes
    nbits: int
    lead: int
    reached: bool  # the encoder stopped at the stop point's input offset (or the end)


def compress_segment(
    level: int,
    segment: Segment[RestartPoint],
    data: bytes,
    reuse: Sequence[tuple[int, int, bytes, int]] = (),
) -> SegmentBits:
    """``data`` is the tar from ``segment.input_range``'s start (to its end, or shorter);
    ``reuse``: spans whose tokens come from the base layer (segreuse.py)."""
    lo = segment.start.base if segment.start else 0
    start = segment.start.start() if segment.start else None
    stop = segment.stop.in_off - lo if segment.stop else -1
    final = segment.stop is None
    try:
        out, nbits, reached = _native().segment(level, data, start, stop, final, reuse or None)
    except ValueError as exc:  # a point that is no state of Go's matcher over this data
        raise RestartError(str(exc)) from exc
    lead = segment.start.bit_off & 7 if segment.start else 0
    return SegmentBits(out, nbits, lead, reached)


def ends_where_planned(segment: Segment[RestartPoint], bits: SegmentBits) -> bool:
    """The encoder stopped at the stop point's input offset, at its bit offset."""
    stop = segment.stop
    return bits.reached and (stop is None or segment.byte_off * 8 + bits.nbits == stop.bit_off)


# --- the origin: proving -----------------------------------------------------------------


class Proof(Enum):
    """What compressing a segment from its start point showed."""

    REPRODUCED = "reproduced"  # the blob's bits, ending at the stop point's offsets
    START_WRONG = "start-wrong"  # other bits: the start state is not the sequential run's
    STOP_WRONG = "stop-wrong"  # the blob's bits, but the stop point's bit offset is not there


def prove_restarts(
    level: int,
    points: Sequence[RestartPoint],
    tar: Path,
    blob: Path,
    deflate_offset: int,
    workers: int,
) -> tuple[RestartPoint, ...]:
    """The points whose segments reproduce the blob's bits; the others dropped.

    A segment whose bits differ drops its start point (the first segment, its
    stop); one with the right bits ending elsewhere than its stop point's bit
    offset drops the stop. The merged segment is proven again over the longer
    range; the loop ends because a segment from the stream's beginning is the
    sequential run itself. ``deflate_offset``: the gzip header's length.
    """
    tar_size = tar.stat().st_size
    with open(tar, "rb") as t, open(blob, "rb") as b:

        def verdict(segment: Segment[RestartPoint]) -> Proof:
            lo, hi = segment.input_range(tar_size)
            try:
                bits = compress_segment(level, segment, os.pread(t.fileno(), hi - lo, lo))
            except RestartError:  # the start state cannot even be loaded over this window
                return Proof.START_WRONG
            at = deflate_offset + segment.byte_off
            if not bits.reached or not same_bits(bits, os.pread(b.fileno(), len(bits.data), at)):
                return Proof.START_WRONG if segment.start else Proof.STOP_WRONG
            return Proof.REPRODUCED if ends_where_planned(segment, bits) else Proof.STOP_WRONG

        return prove_points(points, verdict, workers)


def prove_points(
    points: Sequence[P], verdict: Callable[[Segment[P]], Proof], workers: int
) -> tuple[P, ...]:
    """The points left once every segment between them is ``REPRODUCED`` (``verdict``).

    Each failed segment drops the point it blames (its start, or its stop when
    its start is the stream's beginning or its bits were right but ended
    elsewhere), and the merged segments are judged again, on ``workers`` threads.
    """
    kept = list(points)
    proven: set[Segment[P]] = set()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        while True:
            todo = [s for s in segments(kept) if s not in proven]
            verdicts = dict(zip(todo, pool.map(verdict, todo), strict=True))
            proven.update(s for s, v in verdicts.items() if v is Proof.REPRODUCED)
            wrong = {_blamed(s, v) for s, v in verdicts.items() if v is not Proof.REPRODUCED}
            wrong.discard(None)  # a segment with no points failed: nothing is left to drop
            if not wrong:
                return tuple(kept)
            kept = [p for p in kept if p not in wrong]


def _blamed(segment: Segment[P], verdict: Proof) -> P | None:
    return segment.start if verdict is Proof.START_WRONG else segment.stop


def same_bits(bits: SegmentBits, expected: bytes) -> bool:
    """Equal, but for the previous segment's bits in the first byte and the padding of the last."""
    if len(expected) != len(bits.data) or not bits.data:
        return False
    want = bytearray(expected)
    want[0] &= 0xFF ^ ((1 << bits.lead) - 1)
    if tail := bits.nbits & 7:
        want[-1] &= (1 << tail) - 1
    return want == bits.data


# --- the node: compressing in parallel ---------------------------------------------------


def __getattr__(name: str) -> Any:
    """The node's writers moved to segwriter.py (which imports this module); still here by name."""
    if name in ("SegmentedWriter", "ParallelGoGzipWriter"):
        return getattr(importlib.import_module("krill.delta.segwriter"), name)
    raise AttributeError(name)
