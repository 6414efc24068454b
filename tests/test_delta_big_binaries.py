"""Binaries too big for one binary-diff op are diffed in segments, within the applier's bound.

A file over ``bsdiff_max_bytes`` (32 MiB by default; libarrow.so is 65 MB)
used to fall back to zstd. It is now cut into segments that each fit one
diff op, against proportional windows of its partner. The round trip runs
at a scaled-down bound (a 4 MiB file against a 1 MiB bound: the same code
path in a second or two); the segment plan is checked at real sizes without data.
"""

from __future__ import annotations

import io
import random
import tracemalloc
from pathlib import Path

import pytest

from krill.delta import format as fmt
from krill.delta.encode import EncodeOptions
from krill.delta.jobs import Job, segmentable, segments
from krill.delta.options import DiffEngine
from krill.delta.ranges import Range
from tests.test_delta_support import Entry, build_tar, round_trip

MiB = 1 << 20
# The applier's promise: peak memory within 2 x the largest file + 64 MB per worker.
_PER_WORKER = 64 * MiB


def _applier_bound(largest_file: int) -> int:
    return 2 * largest_file + _PER_WORKER


def _relinked_binary(rng: random.Random, size: int) -> tuple[bytes, bytes]:
    """A "binary" and its relinked twin: NULs up front, blocks shifted, offsets changed.

    The target moves every block after a cut point by a few bytes (code that
    grew), rewrites a 4-byte address every 512 bytes (relocations) and
    replaces a few short stretches (changed functions).
    """
    words = [rng.randbytes(64) for _ in range(4096)]  # repeated "instructions", as code has
    old = bytearray(b"".join(rng.choice(words) for _ in range(size // 64)))
    old[:4096] = b"\x7fELF" + bytes(4092)
    new = bytearray(old)
    for cut in sorted(rng.sample(range(8192, size - 8192), 8), reverse=True):
        new[cut:cut] = rng.randbytes(rng.randint(16, 400))
    for pos in range(4096, len(new) - 4, 512):
        value = (int.from_bytes(new[pos : pos + 4], "little") + 0x40) % 2**32
        new[pos : pos + 4] = value.to_bytes(4, "little")
    for pos in rng.sample(range(4096, len(new) - 256), 16):
        new[pos : pos + 256] = rng.randbytes(256)
    return bytes(old), bytes(new)


def _diff_ops(delta: Path) -> list[fmt.Op]:
    """The delta's binary-diff ops, read with the applier's own checks."""
    with open(delta, "rb") as f:
        header = fmt.read_header(f)
        size = delta.stat().st_size
        reader = fmt.OpReader(
            f,
            base_size=header.base.tar_size,
            target_size=header.target.tar_size,
            delta_size=size,
        )
        ops = []
        while (op := reader.next()).kind != fmt.OP_END:
            if op.kind in (fmt.OP_HDIFF, fmt.OP_BSDIFF):
                ops.append(op)
        return ops


@pytest.mark.parametrize("engine", ["hdiff", "bsdiff"])
def test_a_binary_over_the_diff_bound_round_trips_in_diff_segments(
    tmp_path: Path, engine: DiffEngine
) -> None:
    old, new = _relinked_binary(random.Random(15), 4 * MiB)
    base = build_tar({"lib/libbig.so": Entry("file", old), "lib/x": Entry("file", b"x" * 9000)})
    target = build_tar({"lib/libbig.so": Entry("file", new), "lib/x": Entry("file", b"y" * 9000)})
    # The 32 MiB bound scaled to 1 MiB; zstd's higher levels off so the diff ops are checked.
    options = EncodeOptions(
        bsdiff_max_bytes=1 * MiB,
        diff_segment_bytes=512 << 10,
        diff_engine=engine,
        workers=2,
        top_level_max_bytes=0,
        probe_level=3,
    )
    tracemalloc.start()
    try:
        result, rebuilt = round_trip(tmp_path, base, target, options)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rebuilt == target
    segs = result.stats["diff_segments"]
    assert segs >= 5, result.stats  # 4 MiB in windows of at most 1 MiB
    assert result.stats.get(engine) == segs, result.stats
    assert result.size < len(new) // 20
    ops = _diff_ops(tmp_path / "delta.krd")
    assert len(ops) == segs
    assert all(max(op.base_len, op.out_len) <= options.bsdiff_max_bytes for op in ops)
    assert peak < _applier_bound(len(new)), f"peak {peak >> 20} MiB"


def test_oversized_text_is_not_split(tmp_path: Path) -> None:
    """No NUL up front: matches may be anywhere in the partner, so zstd codes it whole."""
    rng = random.Random(16)
    old = b"\n".join(rng.randbytes(30).hex().encode() for _ in range(40_000))
    new = old[:300_000] + b"a new line\n" + old[300_000:]
    base = build_tar({"data.csv": Entry("file", old)})
    target = build_tar({"data.csv": Entry("file", new)})
    options = EncodeOptions(
        bsdiff_max_bytes=1 * MiB, diff_segment_bytes=256 << 10, workers=2, content_level=3
    )
    result, rebuilt = round_trip(tmp_path, base, target, options)
    assert rebuilt == target
    assert "diff_segments" not in result.stats


def _plan(size: int, partner_size: int, options: EncodeOptions) -> list[Job]:
    """The segments a binary of ``size`` bytes gets against a partner (no data read)."""
    job = Job(Range(512, size), Range(1024, partner_size))
    binary = io.BytesIO(b"\0" * (max(size, partner_size) + 1024))
    assert segmentable(job, binary, binary, options)
    return segments(job, options)


@pytest.mark.parametrize("size", [33 * MiB, 65 * MiB, 200 * MiB, fmt.MAX_PIECE_BYTES])
@pytest.mark.parametrize("partner_ratio", [0.9, 1.0, 1.1])
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_segments_of_real_sizes_fit_the_diff_op_bound(
    size: int, partner_ratio: float, workers: int
) -> None:
    options = EncodeOptions(workers=workers)
    partner_size = int(size * partner_ratio)
    jobs = _plan(size, partner_size, options)
    assert sum(job.target.size for job in jobs) == size
    assert [job.target.offset for job in jobs] == sorted(job.target.offset for job in jobs)
    for job in jobs:
        assert job.base is not None
        assert job.target.size <= options.bsdiff_max_bytes
        assert job.base.size <= options.bsdiff_max_bytes
        assert 1024 <= job.base.offset
        assert job.base.offset + job.base.size <= 1024 + partner_size
        # What the applier holds for one diff op: base window, uncompressed diff, output.
        held = job.base.size + fmt.max_hdiff_raw(job.target.size) + job.target.size
        assert held <= _applier_bound(max(size, partner_size))


def test_a_65_mb_library_gets_four_segments_on_two_workers() -> None:
    """libarrow.so.1900 (pyarrow 19.0.0 -> 19.0.1, 64.8 MB): 3 would fit, 4 keep both busy."""
    jobs = _plan(64_817_752, 64_822_024, EncodeOptions(workers=2))
    assert len(jobs) == 4


def test_the_format_bound_on_diff_ops_stays_within_the_applier_bound() -> None:
    """A diff op at the format's limit (base, diff, output in memory) fits 2 x file + 64 MB.

    Raising MAX_DIFF_OP_BYTES past this would let a delta need more than the
    applier promises; files bigger than the limit are segmented instead.
    """
    op_max = fmt.MAX_DIFF_OP_BYTES
    assert EncodeOptions().bsdiff_max_bytes <= op_max
    held = op_max + fmt.max_hdiff_raw(op_max) + op_max
    assert held <= _applier_bound(op_max)
    with pytest.raises(ValueError, match="binary-diff size limit"):
        EncodeOptions(bsdiff_max_bytes=op_max + 1)
