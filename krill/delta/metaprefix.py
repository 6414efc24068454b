"""How much of the base's meta stream the delta's meta frame takes as prefix: by the clock.

The applier rebuilds the prefix by scanning the base's tar as far as the
prefix's last byte, and its first op (a META op on most layers) waits for it:
on a compressed base, until the base is decompressed that far (~250 MB/s of tar
on one core here). Headers and small files lie all through a tar, so the whole
meta stream of a 387 MB layer of wheels ends at the base's end: every rebuild
waited 1.6-1.8 s for the decompression while a core stood idle (issue 15).

A shorter prefix (the meta bytes before some offset of the base's tar) lets
the rebuild start that much sooner and costs bytes instead: target headers and
small files that matched base meta past the cut. The encoder weighs both on
the same clock, each candidate cut trial-compressed (zstd level 3, the
target's meta stream as it is) and priced as its bytes over a
``REFERENCE_LINK`` link plus the base's decompression up to the cut; the
cheapest wins. On that layer of wheels: all 5.8 MB of prefix saves ~145 KB
of a 21 MB delta (0.01 s at 120 Mbit/s) and costs 1.5 s: no prefix wins. On
a layer of small files the prefix is most of what the delta saves and wins.

Any cut makes a delta every applier reads: ``prefix_len`` was always "the
first so many meta bytes of the base", whatever their number.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from krill.delta.zstdlib import zstd

__all__ = [
    "INFLATE_BYTES_PER_S",
    "REFERENCE_LINK_BITS_PER_S",
    "TRIAL_BYTES",
    "MetaCut",
    "choose_meta_cut",
    "meta_cuts",
]

log = logging.getLogger(__name__)

# The base's decompression on a node (zlib inflate of a wheels layer: 257 MB/s of tar here).
INFLATE_BYTES_PER_S = 250e6
# The link a delta must beat (issue 15's goal): what a delta byte costs in time.
REFERENCE_LINK_BITS_PER_S = 120e6
# Base tar offsets tried as cuts, besides fractions of the base and all of it.
_FIXED_CUTS = (0, 4 << 20, 16 << 20, 64 << 20)
_FRACTIONS = (4, 2)
# The target's meta stream is trial-compressed up to this much (the cost per candidate).
TRIAL_BYTES = 32 << 20
_TRIAL_LEVEL = 3


@dataclass(frozen=True, slots=True)
class MetaCut:
    """A prefix of ``prefix_len`` meta bytes, all before ``tar_offset`` of the base's tar."""

    prefix_len: int
    tar_offset: int

    @property
    def wait_s(self) -> float:
        """How long a node's first op waits for the base to be decompressed this far."""
        return self.tar_offset / INFLATE_BYTES_PER_S


def meta_cuts(
    base_meta_ranges: Iterable[tuple[int, int]], base_size: int, max_prefix: int
) -> list[MetaCut]:
    """The candidate cuts: fixed offsets, fractions of the base, and the whole prefix."""
    ranges = list(base_meta_ranges)
    ends = list(itertools.accumulate(length for _off, length in ranges))
    total = min(ends[-1] if ends else 0, max_prefix)
    offsets = {*_FIXED_CUTS, *(base_size // f for f in _FRACTIONS)}
    cuts = {_cut_at(ranges, offset, max_prefix) for offset in offsets if offset < base_size}
    cuts.add(MetaCut(total, _offset_of(ranges, ends, total)))
    return sorted(cuts, key=lambda c: c.prefix_len)


def _cut_at(ranges: Sequence[tuple[int, int]], offset: int, max_prefix: int) -> MetaCut:
    """The meta bytes lying before ``offset`` (at most ``max_prefix``) and where they end."""
    taken, end = 0, 0
    for start, length in ranges:
        if start >= offset or taken >= max_prefix:
            break
        take = min(length, offset - start, max_prefix - taken)
        taken += take
        end = start + take
    return MetaCut(taken, end)


def _offset_of(ranges: Sequence[tuple[int, int]], ends: Sequence[int], n: int) -> int:
    """The base tar offset where the ``n``-th meta byte ends."""
    if n == 0:
        return 0
    i = bisect.bisect_left(ends, n)
    start, length = ranges[i]
    return start + length - (ends[i] - n)


def choose_meta_cut(
    prefix: bytes,
    cuts: Sequence[MetaCut],
    target_meta: bytes,
    window_log: int,
    target_meta_size: int,
) -> MetaCut:
    """The cut whose delta bytes plus the node's wait for it cost least on the clock.

    ``prefix``: the base's whole meta prefix; ``target_meta``: the first (at most
    ``TRIAL_BYTES``) of the target's ``target_meta_size`` meta bytes, compressed
    once per cut and scaled to the whole.
    """
    sample = target_meta[:TRIAL_BYTES]
    scale = target_meta_size / len(sample) if sample else 0.0
    best: tuple[float, MetaCut] | None = None
    for cut in cuts:
        size = _trial_size(prefix[: cut.prefix_len], sample, window_log) * scale
        cost = size * 8 / REFERENCE_LINK_BITS_PER_S + cut.wait_s
        log.debug(
            "delta.meta_cut prefix=%d tar_offset=%d bytes=%d cost_s=%.3f",
            cut.prefix_len,
            cut.tar_offset,
            size,
            cost,
        )
        if best is None or cost < best[0]:
            best = (cost, cut)
    assert best is not None, "meta_cuts always offers the whole prefix"
    return best[1]


def _trial_size(prefix: bytes, sample: bytes, window_log: int) -> int:
    params: dict[int, int] = {
        zstd.CompressionParameter.compression_level: _TRIAL_LEVEL,
        zstd.CompressionParameter.window_log: window_log,
        zstd.CompressionParameter.enable_long_distance_matching: 1,
    }
    zstd_dict = zstd.ZstdDict(prefix, is_raw=True).as_prefix if len(prefix) >= 8 else None
    compressor = zstd.ZstdCompressor(options=params, zstd_dict=zstd_dict)
    return len(compressor.compress(sample, mode=compressor.FLUSH_FRAME))
