"""The encoder's tuning knobs, in one place every encoding step reads them from.

The defaults are what the benchmark measured (docs/deltas.md); the one limit
checked here is the one an applier enforces, so a delta that would be refused
after all the work is refused before it starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from krill.delta import format as fmt

__all__ = ["MAX_WORKERS", "DiffEngine", "EncodeOptions", "default_workers"]

# Threads one delta job (encode or apply) uses at most: recompression and segmented diffs
# scale to about this many cores, and more would only take memory (64 MB each).
MAX_WORKERS = 4


def default_workers(cores: int | None = None) -> int:
    """Worker threads for a delta job on ``cores`` cores (this machine's when None)."""
    return max(1, min(MAX_WORKERS, cores or os.cpu_count() or 1))


# "hdiff" (HDiffPatch: 4-6x faster, mostly smaller) or "bsdiff" (bsdiff4, format v1 ops).
DiffEngine = Literal["hdiff", "bsdiff"]


@dataclass(frozen=True, slots=True)
class EncodeOptions:
    """Tuning knobs; the defaults are what the benchmark measured."""

    content_level: int = 19
    # A cheap first try (~1/15 the time of level 12): the fallback op, and the yardstick that
    # decides whether a binary diff and zstd's higher levels are worth running.
    gate_level: int = 3
    # Files over top_level_max_bytes get this level instead of content_level (and a diff).
    probe_level: int = 12
    top_level_max_bytes: int = 8 << 20
    meta_level: int = 19
    small_file_limit: int = 4096
    # Largest binary-diff op: a file and its partner, or one segment of a larger binary and
    # its partner window (the applier holds both, and the diff, in memory). 0 turns binary
    # diffs off.
    bsdiff_max_bytes: int = 32 << 20
    diff_engine: DiffEngine = "hdiff"
    # Changed ELF files (x86-64, aarch64) get OP_ELF where it round-trips (krill/delta/elf.py).
    elf_transform: bool = True
    # Binary files larger than this are diffed in `workers` segments (more where a segment
    # and its window would exceed bsdiff_max_bytes), each against the same-proportion window
    # of the partner, in parallel (+0.1-0.5% size at 2 segments).
    diff_segment_bytes: int = 4 << 20
    workers: int = default_workers()
    piece_bytes: int = fmt.MAX_PIECE_BYTES

    def __post_init__(self) -> None:
        # Appliers refuse binary-diff ops over MAX_DIFF_OP_BYTES (their memory bound), so
        # a delta made with a larger limit would be thrown away after all the work.
        if not 0 <= self.bsdiff_max_bytes <= fmt.MAX_DIFF_OP_BYTES:
            raise ValueError(
                f"the binary-diff size limit must be 0..{fmt.MAX_DIFF_OP_BYTES} bytes "
                f"(what appliers accept), got {self.bsdiff_max_bytes}"
            )

    def diff_allowed(self, size: int, base_size: int) -> bool:
        """Whether a file and its partner are small enough for a binary diff."""
        return size <= self.bsdiff_max_bytes and base_size <= self.bsdiff_max_bytes
