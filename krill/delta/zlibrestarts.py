"""Restart points for zlib-made gzip: recompressed on every core, still bit for bit.

A zlib-made layer (Python's gzip module, levels 1-9) was rebuilt on one core
by ``zlib.compressobj``: 28 MB/s of tar, so a delta only beat a full download
on links under ~60 Mbit/s. zlib's API cannot resume a stream mid-way, but it
does not need to: at levels 4-9 (``deflate_slow``) every position goes into
the hash chains, and a match reaches at most 32506 bytes back, so at a block
boundary of the original stream where no lazy match is pending, a fresh raw
compressobj primed with the 32 KiB before it (``zdict``: deflateSetDictionary
hashes the window and, through ``s->insert``, its last two positions once
input comes) finds the same matches; its symbol buffer starts empty as the
original's did at the boundary, so it ends the same blocks with the same trees.
Whether a boundary is clean cannot be seen from outside, so the origin
*proves* each point as for Go (``restarts.prove_points``): it compresses the
segment and compares with the blob. Measured on a 40 MB numpy tar, every
byte-aligned boundary tried at levels 4, 6 and 9 (memLevel 8 and 9) was
clean; at level 3 none was (``deflate_fast`` skips positions inside long
matches), so levels 1-3 stay sequential.

Blocks end every ~16 K symbols (32 K at memLevel 9), 60-300 KB of tar. A
segment starting mid-byte is shifted into place and joined as Go's are (one OR
where two meet); the recipe also records the stream's length in bits
(``deflate_bits``), so the last segment's end is known too. The origin finds
the boundaries with ``krill._goflate.deflate_blocks``, a block scanner that
decompresses nothing into memory.

A segment's encoder gets ``LOOKAHEAD`` bytes past its stop, enough for it to
pass the stop (zlib matches while 262 bytes are ahead), and is then finished:
its output up to the stop's bit offset is the original's, and what follows is
one final block that must inflate, from a window of the 32 KiB before the
stop, to exactly those lookahead bytes. That check is how a node sees a
segment ended where planned; a recipe whose points do not fit the tar fails
it (RestartError), and the blob digest is the last guard anyway.

Memory on the node: as the Go writer's, ``workers`` segments of 4 MiB (plus
32 KiB of window) and their output in flight.

The segments are compressed by ``krill._zdeflate`` where it is built and the system zlib
is the version it reproduces (1.2.13): the same bits as ``zlib.compressobj``, at ~1.5x its
speed (docs/benchmarks.md), with the GIL released so workers use every core.
"""

from __future__ import annotations

import bisect
import importlib
import itertools
import mmap
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from krill.delta.restarts import (
    MAX_RESTARTS,
    RESTART_INTERVAL,
    Proof,
    RestartError,
    Segment,
    SegmentBits,
    prove_points,
    same_bits,
    segment_end,
)
from krill.delta.segstream import ShiftedEmitter
from krill.delta.segwriter import SegmentedWriter, StreamWork

__all__ = [
    "LOOKAHEAD",
    "ZLIB_PARALLEL_LEVELS",
    "ParallelZlibWriter",
    "ZlibPoint",
    "ZlibSetting",
    "block_boundaries",
    "compress_zlib_segment",
    "compress_zlib_streamed",
    "find_zlib_restarts",
    "parse_zlib_restarts",
    "plan_points",
    "prove_zlib_restarts",
]

# deflate_slow: every position hashed, so a clean block boundary restarts from its window.
ZLIB_PARALLEL_LEVELS = frozenset(range(4, 10))
# Boundaries tried per restart point (nearest first), when the nearest does not restart.
_CANDIDATES = 8
# zlib matches while MIN_LOOKAHEAD (262) bytes are ahead; 8 KiB lets the encoder pass the stop
# and leaves a final block small enough to inflate as the check (0.2% extra work per segment).
LOOKAHEAD = 8 << 10
_WINDOW = 1 << 15


def _native() -> Any:
    """krill._goflate, built by setup.py (the origin's block scanner lives there)."""
    return importlib.import_module("krill._goflate")


# zlib versions whose deflate_slow output krill._zdeflate was checked against bit for bit
# (tests/test_zdeflate.py); with any other system zlib, segments are compressed by zlib.
_ZDEFLATE_MATCHES = frozenset({"1.2.13"})


def _zdeflate() -> Any | None:
    """krill._zdeflate's module when it is built and matches the system zlib, else None."""
    if zlib.ZLIB_RUNTIME_VERSION not in _ZDEFLATE_MATCHES:
        return None
    try:
        return importlib.import_module("krill._zdeflate")
    except ImportError:
        return None


_ZDEFLATE = _zdeflate()


@dataclass(frozen=True, slots=True)
class ZlibSetting:
    """The deflateInit2 parameters a recipe recorded."""

    level: int
    mem_level: int
    strategy: int

    def compressobj(self, zdict: bytes | None = None) -> Any:
        """A raw deflate encoder with these settings, primed with ``zdict``: krill's own
        (same bits, faster) for the lazy levels where it can, else zlib's."""
        native = _ZDEFLATE if self.native_ok() else None
        if native is not None:
            return native.Compressor(self.level, self.mem_level, self.strategy, zdict)
        wbits = -zlib.MAX_WBITS
        args = (self.level, zlib.DEFLATED, wbits, self.mem_level, self.strategy)
        return zlib.compressobj(*args, zdict=zdict) if zdict else zlib.compressobj(*args)

    def native_ok(self) -> bool:
        """Whether krill._zdeflate encodes these settings (levels 4-9, memLevel 1-9,
        default or filtered strategy) and is available."""
        return (
            _ZDEFLATE is not None
            and self.level in ZLIB_PARALLEL_LEVELS
            and 1 <= self.mem_level <= 9
            and self.strategy in (zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED)
        )


@dataclass(frozen=True, slots=True)
class ZlibPoint:
    """A byte-aligned block boundary: ``in_off`` bytes of tar, ``bit_off`` bits of deflate."""

    in_off: int
    bit_off: int

    @property
    def base(self) -> int:
        """The tar offset of the window a restarted encoder is primed with."""
        return max(0, self.in_off - _WINDOW)

    def to_json(self) -> list[int]:
        return [self.in_off, self.bit_off]


def parse_zlib_restarts(value: object) -> tuple[ZlibPoint, ...]:
    """Points from a recipe's JSON, checked for shape and order (RestartError if not)."""
    if not isinstance(value, list) or len(value) > MAX_RESTARTS:
        raise RestartError(f"restarts must be a list of at most {MAX_RESTARTS} points")
    points = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2 or not all(type(v) is int for v in item):
            raise RestartError("a zlib restart point is [in_off, bit_off], two integers")
        point = ZlibPoint(*item)
        if not (0 < point.in_off < 1 << 50 and 0 < point.bit_off < 1 << 53):
            raise RestartError(f"zlib restart point {item} is out of range")
        points.append(point)
    for before, after in itertools.pairwise(points):
        if after.in_off <= before.in_off or after.bit_off <= before.bit_off:
            raise RestartError("restart points must be in increasing order")
    return tuple(points)


def compress_zlib_segment(
    setting: ZlibSetting, segment: Segment[ZlibPoint], data: bytes, end_bit: int
) -> SegmentBits:
    """The original's bytes from ``segment.start`` to its stop; ``data``: the tar from
    ``segment.start.base`` to the stop plus ``LOOKAHEAD`` (to the end for the last);
    ``end_bit``: the stream's length in bits (the last segment ends mid-byte).

    ``reached``: what followed the stop inflated to the lookahead bytes, so a
    block boundary of this run lies exactly at the stop's offsets.
    """
    start, stop = segment.start, segment.stop
    lo = start.base if start else 0
    view = memoryview(data)
    begin = start.in_off - lo if start else 0
    deflate = setting.compressobj(bytes(view[:begin]) if start else None)
    out = deflate.compress(view[begin:]) + deflate.flush(zlib.Z_FINISH)
    first = start.bit_off if start else 0
    lead = first & 7
    if stop is None:  # end_bit: where the whole stream's final block ends
        rel = end_bit - first
        fits = len(out) * 8 - 8 < rel <= len(out) * 8
        return SegmentBits(_shifted(out, lead, rel if fits else 0), lead + rel, lead, fits)
    rel, end = stop.bit_off - first, stop.in_off - lo
    reached = 0 <= rel >> 3 < len(out) and 0 < end <= len(data)
    if reached:
        tail = out[rel >> 3 :]
        tail = _shifted(tail, -(rel & 7), len(tail) * 8) if rel & 7 else tail
        window = bytes(view[max(0, end - _WINDOW) : end])
        reached = _inflates_to(tail, window, view[end:])
    if not reached:  # the bits well before the stop still say whether the start was right
        prefix = max(0, min(rel, len(out) * 8) - 16 * LOOKAHEAD)
        return SegmentBits(_shifted(out, lead, prefix), lead + prefix, lead, False)
    return SegmentBits(_shifted(out, lead, rel), lead + rel, lead, True)


def compress_zlib_streamed(
    setting: ZlibSetting,
    segment: Segment[ZlibPoint],
    chunks: Iterable[memoryview],
    emit: Callable[[bytes], None],
    end_bit: int,
) -> SegmentBits:
    """``compress_zlib_segment`` over input that comes in ``chunks``, its output emitted
    (shifted into place) as it comes, all but what follows the stop's byte.

    The same compressobj calls on the same bytes: the bits are the same. What is
    held is the priming window, the 32 KiB before the stop and the lookahead
    after it, and the output from the stop's byte on. ``reached`` as there; the
    returned bits are the segment's last, after what was emitted.
    """
    start, stop = segment.start, segment.stop
    lo = start.base if start else 0
    begin = start.in_off - lo if start else 0
    first = start.bit_off if start else 0
    rel = (stop.bit_off if stop else end_bit) - first
    keep_from = max(0, stop.in_off - lo - _WINDOW) if stop else -1
    out = ShiftedEmitter(first & 7, max(0, rel >> 3), emit)
    prime, kept, pos = bytearray(), bytearray(), 0
    deflate = None if start else setting.compressobj()
    for chunk in chunks:
        view = memoryview(chunk)
        if stop and pos + len(view) > keep_from:
            kept += view[max(0, keep_from - pos) :]
        pos += len(view)
        if deflate is None:
            need = begin - len(prime)
            prime += view[:need]
            view = view[need:]
            if len(prime) < begin:
                continue
            deflate = setting.compressobj(bytes(prime))
        out.add(deflate.compress(view))
    if deflate is None:  # the input ended inside the priming window: nothing fits
        return SegmentBits(b"", 0, first & 7, False)
    out.add(deflate.flush(zlib.Z_FINISH))
    if stop is None:
        fits = out.total * 8 - 8 < rel <= out.total * 8
    else:
        end = stop.in_off - lo
        fits = out.consumed <= rel >> 3 < out.total and 0 < end - keep_from <= len(kept)
        if fits:
            tail = bytes(out.pending[(rel >> 3) - out.consumed :])
            tail = _shifted(tail, -(rel & 7), len(tail) * 8) if rel & 7 else tail
            at = end - keep_from
            fits = _inflates_to(tail, bytes(kept[:at]), memoryview(kept)[at:])
    if not fits:
        return SegmentBits(b"", 0, first & 7, False)
    data, nbits, lead = out.final(rel)
    return SegmentBits(data, nbits, lead, True)


def _shifted(data: bytes, shift: int, nbits: int) -> bytes:
    """The first ``nbits`` bits of ``data`` moved ``shift`` bits up (down if negative), as
    deflate packs them (least significant bit first), in whole bytes."""
    if not shift and not nbits & 7:
        return data[: nbits >> 3]
    value = int.from_bytes(data[: (nbits + 7) >> 3], "little") & ((1 << nbits) - 1)
    value = value << shift if shift >= 0 else value >> -shift
    return value.to_bytes((nbits + shift + 7) >> 3, "little")


def _inflates_to(tail: bytes, window: bytes, expected: memoryview) -> bool:
    """``tail`` is one complete raw deflate stream, over ``window``, of exactly ``expected``."""
    inflate = zlib.decompressobj(-zlib.MAX_WBITS, zdict=window) if window else None
    inflate = inflate or zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        got = inflate.decompress(tail, len(expected) + 1)
    except zlib.error:
        return False
    # Shifted down to a byte, the final byte's padding can be a whole zero byte past the end.
    return inflate.eof and inflate.unused_data in (b"", b"\0") and got == expected


# --- the origin: finding and proving points ------------------------------------------------


def block_boundaries(blob: Path, deflate_offset: int) -> tuple[list[tuple[int, int]], int]:
    """(bit_off, in_off) of every block start inside the blob's deflate stream (not the
    first), and the stream's length in bits.

    The blob is mapped, not read: the scanner keeps two 64 KiB tables whatever
    its size. RestartError if the stream is not valid deflate.
    """
    with open(blob, "rb") as f:
        if os.fstat(f.fileno()).st_size <= deflate_offset:
            raise RestartError("the blob ends inside its gzip header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            try:
                blocks, end_bit, _size = _native().deflate_blocks(mapped, deflate_offset)
            except ValueError as exc:
                raise RestartError(str(exc)) from exc
    return [(bit, out) for bit, out, _type in blocks if out > 0], end_bit


def plan_points(
    boundaries: Sequence[tuple[int, int]],
    tar_size: int,
    every: int = RESTART_INTERVAL,
    usable: Callable[[ZlibPoint, ZlibPoint], bool] | None = None,
) -> list[ZlibPoint]:
    """About one point per ``every`` bytes of tar, closer toward its end (``segment_end``):
    the boundary nearest each target.

    ``usable(point, next_boundary)``, if given, screens candidates (nearest
    first, up to ``_CANDIDATES`` per target): a boundary where zlib had a lazy
    match pending does not restart, and on binaries many do not.
    """
    ordered = sorted((out, bit) for bit, out in boundaries if 0 < out < tar_size)
    offsets = [out for out, _bit in ordered]
    points: list[ZlibPoint] = []
    target = segment_end(0, tar_size, every)
    while target < tar_size and len(points) < MAX_RESTARTS:
        after = points[-1].in_off if points else 0
        i = bisect.bisect_left(offsets, target)
        near = range(max(0, i - _CANDIDATES), min(len(ordered) - 1, i + _CANDIDATES))
        tries = sorted(
            (j for j in near if offsets[j] > after), key=lambda j: abs(offsets[j] - target)
        )
        chosen = next(
            (
                ZlibPoint(offsets[j], ordered[j][1])
                for j in tries[:_CANDIDATES]
                if usable is None or usable(ZlibPoint(*ordered[j]), ZlibPoint(*ordered[j + 1]))
            ),
            None,
        )
        if chosen is not None:
            points.append(chosen)
        target = segment_end(chosen.in_off if chosen else target, tar_size, every)
    return points


def prove_zlib_restarts(
    setting: ZlibSetting,
    points: Sequence[ZlibPoint],
    tar: Path,
    blob: Path,
    deflate_offset: int,
    end_bit: int,
    workers: int,
) -> tuple[ZlibPoint, ...]:
    """The points whose segments reproduce the blob's bytes (``restarts.prove_points``)."""
    tar_size = tar.stat().st_size
    with open(tar, "rb") as t, open(blob, "rb") as b:

        def verdict(segment: Segment[ZlibPoint]) -> Proof:
            lo, hi = segment.input_range(tar_size, LOOKAHEAD)
            tar_bytes = os.pread(t.fileno(), hi - lo, lo)
            bits = compress_zlib_segment(setting, segment, tar_bytes, end_bit)
            at = deflate_offset + segment.byte_off
            if not same_bits(bits, os.pread(b.fileno(), len(bits.data), at)):
                return Proof.START_WRONG if segment.start else Proof.STOP_WRONG
            return Proof.REPRODUCED if bits.reached else Proof.STOP_WRONG

        return prove_points(points, verdict, workers)


def find_zlib_restarts(
    setting: ZlibSetting,
    tar: Path,
    blob: Path,
    deflate_offset: int,
    workers: int,
    every: int = RESTART_INTERVAL,
) -> tuple[tuple[ZlibPoint, ...], int, int]:
    """Proven points for a blob the setting reproduces, how many were planned, and the
    deflate stream's length in bits."""
    if setting.level not in ZLIB_PARALLEL_LEVELS:
        return (), 0, 0
    boundaries, end_bit = block_boundaries(blob, deflate_offset)
    with open(tar, "rb") as t, open(blob, "rb") as b:

        def usable(point: ZlibPoint, following: ZlibPoint) -> bool:
            """The block after the point reproduces: a cheap screen before the proof."""
            segment = Segment(point, following)
            lo, hi = segment.input_range(tar_size, LOOKAHEAD)
            bits = compress_zlib_segment(setting, segment, os.pread(t.fileno(), hi - lo, lo), 0)
            at = deflate_offset + segment.byte_off
            expected = os.pread(b.fileno(), len(bits.data), at)
            return bits.reached and same_bits(bits, expected)

        tar_size = tar.stat().st_size
        planned = plan_points(boundaries, tar_size, every, usable)
    if not planned:
        return (), 0, end_bit
    args = (setting, planned, tar, blob, deflate_offset, end_bit, workers)
    return prove_zlib_restarts(*args), len(planned), end_bit


# --- the node ----------------------------------------------------------------------------


class ParallelZlibWriter(SegmentedWriter[ZlibPoint]):
    """zlib's gzip of the tar fed in from proven points: the bytes ``GzipZlib`` makes."""

    lookahead = LOOKAHEAD

    def __init__(
        self,
        header: bytes,
        setting: ZlibSetting,
        points: Sequence[ZlibPoint],
        end_bit: int,
        tar_size: int,
        workers: int,
        spill_dir: str | None = None,
    ) -> None:
        if setting.level not in ZLIB_PARALLEL_LEVELS:
            raise RestartError(f"zlib level {setting.level} is compressed in sequence")
        if points and not points[-1].bit_off < end_bit < 1 << 53:
            raise RestartError("the deflate stream's end lies before the last restart point")
        self._setting = setting
        self._end_bit = end_bit
        super().__init__(header, points, tar_size, workers, spill_dir)

    def _compress(self, segment: Segment[ZlibPoint], data: bytes) -> SegmentBits:
        return compress_zlib_segment(self._setting, segment, data, self._end_bit)

    def _fits(self, segment: Segment[ZlibPoint], bits: SegmentBits) -> bool:
        return bits.reached

    def _streamed(self, segment: Segment[ZlibPoint]) -> StreamWork:
        def work(chunks: Iterator[memoryview], emit: Callable[[bytes], None]) -> SegmentBits:
            return compress_zlib_streamed(self._setting, segment, chunks, emit, self._end_bit)

        return work
