"""How a changed target file is cut into encoding jobs, each with its base window.

A job is one piece of target content and the base range it may be coded
against. Files over ``piece_bytes`` are coded in pieces against the
same-offset range of their partner, so an applier's memory stays bounded
whatever the file; large binaries are further split into one segment per
worker, so their binary diffs run in parallel.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from krill.delta.options import EncodeOptions
from krill.delta.pairing import read_tar_range
from krill.delta.ranges import Range

__all__ = ["Job", "looks_binary", "partner_piece", "segmentable", "segments", "split"]

# A partner shorter than this is no use as a prefix (zstd needs 8 bytes; a diff gains nothing).
_MIN_PARTNER = 64


@dataclass(frozen=True, slots=True)
class Job:
    """One piece of target content and the base range it may be coded against."""

    target: Range
    base: Range | None


def split(rng: Range, piece: int) -> Iterator[Range]:
    """``rng`` in consecutive pieces of at most ``piece`` bytes."""
    for off in range(0, rng.size, piece):
        yield Range(rng.offset + off, min(piece, rng.size - off))


def partner_piece(
    partner: Range | None, offset: int, size: int, options: EncodeOptions
) -> Range | None:
    """The base bytes at the same position as a target piece (whole partner if it fits)."""
    if partner is None or partner.size < _MIN_PARTNER:
        return None
    if partner.size <= options.piece_bytes:
        return partner
    start = min(offset, partner.size - _MIN_PARTNER)
    return Range(partner.offset + start, min(options.piece_bytes, partner.size - start))


def segmentable(job: Job, base: BinaryIO, target: BinaryIO, options: EncodeOptions) -> bool:
    """Whether a job is a large binary to diff in segments (see ``segments``).

    With HDiffPatch every binary over ``diff_segment_bytes`` is split (the
    segments run in parallel). Binaries too big for one diff op (over
    ``bsdiff_max_bytes``, which keeps the applier's memory bounded) are split
    with either engine: segments are the only way they get a binary diff.
    """
    rng, partner = job.target, job.base
    if partner is None or options.diff_segment_bytes <= 0 or rng.size <= options.diff_segment_bytes:
        return False
    oversized = not options.diff_allowed(rng.size, partner.size)
    if options.diff_engine != "hdiff" and not oversized:
        return False
    if _segment_count(rng.size, partner.size, options) is None:
        return False
    return looks_binary(target, rng) and looks_binary(base, partner)


def segments(job: Job, options: EncodeOptions) -> list[Job]:
    """A large binary's job as segments, each with the proportional window of its partner.

    Relinked binaries keep their layout (sections in the same order, code
    shifted a little), so target bytes at 40% of the file match base bytes
    near 40% of the partner; a margin of 1/8 segment on each side covers the
    shift. HDiffPatch releases the GIL, so segments diff in parallel threads:
    measured on 4.7-25 MB libraries, 2-7 segments cost 0.1-0.5% size and
    halve the time on 2 cores. A binary over ``bsdiff_max_bytes`` gets as
    many segments as it takes for each segment and its window to fit that
    bound, rounded up to a multiple of the workers (libarrow.so, 65 MB: 4
    segments on 2 workers, docs/deltas.md). Text and data files are not
    split (their matches can be anywhere in the partner): see ``segmentable``.
    """
    rng, partner = job.target, job.base
    assert partner is not None, "segmentable() checks the job has a partner"
    count = _segment_count(rng.size, partner.size, options)
    assert count is not None, "segmentable() checks the segments fit"
    step = -(-rng.size // count)
    margin = _margin(step)
    jobs = []
    for start in range(0, rng.size, step):
        end = min(rng.size, start + step)
        window = _window(partner, rng.size, start, end, margin)
        jobs.append(Job(Range(rng.offset + start, end - start), window))
    return jobs


# A segment's margin on each side of its proportional window: 1/8 segment, at least 64 KiB.
_MARGIN_DIVISOR = 8
_MIN_MARGIN = 64 << 10
# A file that would need more segments than this to fit the diff-op bound is coded by zstd
# (only a partner far larger than the file, which no relinked binary has, gets there).
_MAX_SEGMENTS = 256


def _segment_count(size: int, partner_size: int, options: EncodeOptions) -> int | None:
    """One segment per worker, or more where that many would not fit one diff op each.

    More segments are rounded up to a multiple of the workers, so the last
    round of diffs does not run on one core alone (libarrow.so on 2 workers:
    4 segments instead of 3, +0.14 % size, shorter wall time). None when no
    count up to _MAX_SEGMENTS fits (the partner is far larger than the file).
    """
    workers = max(1, options.workers)
    wanted = min(workers, -(-size // options.diff_segment_bytes))
    for count in range(max(1, wanted), _MAX_SEGMENTS + 1):
        if _fits(size, partner_size, count, options):
            if count > workers:
                count = min(_MAX_SEGMENTS, -(-count // workers) * workers)
            return count
    return None


def _fits(size: int, partner_size: int, count: int, options: EncodeOptions) -> bool:
    """Whether ``count`` segments and their windows each fit one binary-diff op."""
    step = -(-size // count)
    window = -(-step * partner_size // size) + 2 * _margin(step) + 1
    return options.diff_allowed(step, min(window, partner_size))


def _margin(step: int) -> int:
    return max(_MIN_MARGIN, step // _MARGIN_DIVISOR)


def _window(partner: Range, size: int, start: int, end: int, margin: int) -> Range:
    """The partner bytes at the same proportion as target bytes ``start:end``, plus margins."""
    lo = max(0, start * partner.size // size - margin)
    hi = min(partner.size, end * partner.size // size + margin)
    return Range(partner.offset + lo, hi - lo)


def looks_binary(f: BinaryIO, rng: Range) -> bool:
    """A NUL byte in the first 8 KiB: executables, libraries, archives, not text."""
    return b"\0" in read_tar_range(f, Range(rng.offset, min(rng.size, 8192)))
