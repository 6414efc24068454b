"""The smallest op that rebuilds one piece of a changed target file.

A fast zstd probe first (level 3 with the partner as prefix, long-distance
matching, about 1/15 the time of level 12); a binary diff where the probe
left a lot (changed binaries: on relinked code a diff is both smaller and
faster than zstd's top levels); zstd's top level last, and only where it can
still win. A piece with no partner is literal zstd. Runs in worker threads:
zstd, HDiffPatch and bsdiff4 all release the GIL.
"""

from __future__ import annotations

from enum import StrEnum

from bsdiff4 import core as bsdiff_core

from krill.delta import elf, hdiff
from krill.delta import format as fmt
from krill.delta.jobs import Job
from krill.delta.layerfiles import window_log_for
from krill.delta.options import EncodeOptions
from krill.delta.ranges import Range
from krill.delta.zstdlib import zstd

__all__ = ["PieceEncoding", "encode_piece", "zstd_literal"]


class PieceEncoding(StrEnum):
    """Which encoding won for a piece; the value is its key in the header's ``stats``."""

    ZSTD_LITERAL = "zstd_literal"
    ZSTD_PREFIX = "zstd_prefix"
    HDIFF = "hdiff"
    ELF = "elf"
    BSDIFF = "bsdiff"


def encode_piece(
    job: Job, data: bytes, base: bytes, options: EncodeOptions
) -> tuple[bytes, PieceEncoding]:
    """The smallest op that rebuilds ``data`` (the target bytes of ``job``), and its kind."""
    top_level = options.content_level if len(data) <= options.top_level_max_bytes else 0
    partner = job.base
    if partner is None:
        level = top_level or options.probe_level
        return fmt.encode_zlit(len(data), zstd_literal(data, level)), PieceEncoding.ZSTD_LITERAL
    window = window_log_for(len(base) + len(data))

    def prefixed(level: int) -> bytes:
        comp = _zstd_prefixed(data, base, window, level)
        return fmt.encode_zprefix(partner.offset, partner.size, len(data), comp)

    gate = best = prefixed(min(options.gate_level, options.content_level))
    kind = PieceEncoding.ZSTD_PREFIX
    if _worth_diff(len(gate), len(data), len(base), options):
        candidate, engine = _binary_diff_op(partner, base, data, options)
        if candidate is not None and len(candidate) < len(best):
            best, kind = candidate, engine
    # A diff that beat the gate by over 25% is rarely beaten by zstd's higher levels (they
    # save ~20-25% over level 3 on binaries): only then is their time skipped.
    if len(best) > 0.75 * len(gate):
        level = top_level or options.probe_level
        if level > options.gate_level:
            candidate = prefixed(min(level, options.content_level))
            if len(candidate) < len(best):
                best, kind = candidate, PieceEncoding.ZSTD_PREFIX
    return best, kind


def _binary_diff_op(
    partner: Range, base: bytes, data: bytes, options: EncodeOptions
) -> tuple[bytes | None, PieceEncoding]:
    """The op of the configured binary-diff engine, or None where it cannot be used."""
    level = min(options.content_level, 19)
    if options.elf_transform and elf.looks_elf(data) and elf.looks_elf(base) and elf.available():
        op = _elf_op(partner, base, data, level)
        if op is not None:
            return op, PieceEncoding.ELF
    if options.diff_engine == "hdiff":
        raw = hdiff.diff(base, data)
        if len(raw) > fmt.max_hdiff_raw(len(data)):
            return None, PieceEncoding.HDIFF
        comp = zstd_literal(raw, level)
        op = fmt.encode_hdiff(partner.offset, partner.size, len(data), len(raw), comp)
        return op, PieceEncoding.HDIFF
    blocks = _bsdiff_blocks(base, data, level)
    if blocks is None:
        return None, PieceEncoding.BSDIFF
    return fmt.encode_bsdiff(partner.offset, partner.size, len(data), blocks), PieceEncoding.BSDIFF


def _elf_op(partner: Range, base: bytes, data: bytes, level: int) -> bytes | None:
    """OP_ELF (elf.py): on relinked x86-64/aarch64 code 0.3-0.65x bsdiff's size, so when the
    transform round-trips it replaces the plain diff (whose time it would double)."""
    coded = elf.diff(base, data)
    if coded is None or len(coded.raw) > fmt.max_hdiff_raw(len(data)):
        return None
    comp = zstd_literal(coded.side + coded.raw, level)
    raw_len = len(coded.side) + len(coded.raw)
    return fmt.encode_elf(partner.offset, partner.size, len(data), len(coded.side), raw_len, comp)


def _worth_diff(coded: int, size: int, base_size: int, options: EncodeOptions) -> bool:
    """Binary diffs cost time and memory (bsdiff ~16x the base): only where zstd left > 4 KiB.

    No share of the size: on relinked code zstd's 0.5 % (17 KB of a 3.7 MB segment of
    numpy 1.26.4's OpenBLAS) is still four times what HDiffPatch needs (docs/deltas.md).
    """
    return options.diff_allowed(size, base_size) and coded > 4096


def zstd_literal(data: bytes, level: int) -> bytes:
    """One zstd frame of ``data`` alone, its window just covering it."""
    options: dict[int, int] = {
        zstd.CompressionParameter.compression_level: level,
        zstd.CompressionParameter.window_log: window_log_for(len(data)),
    }
    return zstd.compress(data, options=options)


def _zstd_prefixed(data: bytes, base: bytes, window: int, level: int) -> bytes:
    params: dict[int, int] = {
        zstd.CompressionParameter.compression_level: level,
        zstd.CompressionParameter.window_log: window,
        zstd.CompressionParameter.enable_long_distance_matching: 1,
    }
    prefix = zstd.ZstdDict(base, is_raw=True).as_prefix
    return zstd.compress(data, options=params, zstd_dict=prefix)


def _bsdiff_blocks(base: bytes, data: bytes, level: int) -> tuple[bytes, bytes, bytes] | None:
    """bsdiff4's control/diff/extra blocks, zstd-compressed; None if the control is oversized."""
    control, diff, extra = bsdiff_core.diff(base, data)
    if len(control) > max(1 << 20, len(data)):
        return None
    return zstd_literal(control, level), zstd_literal(diff, level), zstd_literal(extra, level)
