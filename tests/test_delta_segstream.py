"""Long zlib segments streamed into their worker (krill/delta/segstream.py).

A segment over ``stream_min`` is fed as the tar arrives instead of held whole:
the bytes must still be zlib's own (any level 4-9, any feed size, on 1 or 2
workers, segments starting mid-byte or not), a long unproven stretch must
stay within a memory bound that does not grow with it, points that do not fit
still fail cleanly, and an abandoned writer stops its threads.
"""

from __future__ import annotations

import random
import tracemalloc
import zlib
from pathlib import Path

import pytest

from krill.delta.detect import detect_recipe
from krill.delta.recipes import Recipe, RecipeError, gzip_recipe
from krill.delta.restarts import RESTART_INTERVAL
from krill.delta.segstream import STREAM_BUFFER, SegmentChannel
from krill.delta.segwriter import SegmentedWriter
from krill.delta.zlibrestarts import ParallelZlibWriter, ZlibPoint, ZlibSetting
from tests.test_delta_zlib_restarts import _honest_points, gzip_blob, rebuild
from tests.test_gogzip import python_tar

pytest.importorskip("krill._goflate", reason="the C extension is not built")


@pytest.fixture(scope="module")
def real_tar() -> bytes:
    return python_tar(5 << 20)


def mixed_tar(size: int, seed: int = 7) -> bytes:
    """Text with incompressible stretches, as a layer of wheels (stored blocks and all)."""
    rng = random.Random(seed)
    text = python_tar(2 << 20)
    out = bytearray()
    while len(out) < size:
        at = rng.randrange(0, len(text) - (1 << 20))
        out += text[at : at + rng.randrange(100_000, 1 << 20)]
        out += rng.randbytes(rng.randrange(50_000, 600_000))
    return bytes(out[:size])


@pytest.fixture
def stream_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every segment streamed, however short."""
    monkeypatch.setattr(SegmentedWriter, "stream_min", 0)


@pytest.mark.parametrize("level", [4, 6, 9])
@pytest.mark.parametrize("workers,feed", [(1, 1 << 20), (2, 70_001), (2, 9 << 20)])
def test_streamed_segments_are_zlibs_bytes(
    tmp_path: Path, real_tar: bytes, stream_all: None, level: int, workers: int, feed: int
) -> None:
    setting = ZlibSetting(level, 8, zlib.Z_DEFAULT_STRATEGY)
    blob = gzip_blob(real_tar, setting)
    (tmp_path / "tar").write_bytes(real_tar)
    (tmp_path / "blob").write_bytes(blob)
    recipe = detect_recipe(tmp_path / "blob", tmp_path / "tar", workers=2, restart_every=400_000)
    assert len(recipe.params["restarts"]) >= 4
    assert rebuild(recipe, real_tar, workers, feed=feed) == blob


def test_mid_byte_points_stream_too(tmp_path: Path, stream_all: None) -> None:
    """Points at any bit offset (most are not byte-aligned on binaries) shift into place."""
    data = mixed_tar(6 << 20)
    setting = ZlibSetting(6, 8, 0)
    points, end_bit = _honest_points(tmp_path, data, setting)
    assert any(p.bit_off & 7 for p in points)
    header = gzip_blob(b"", setting)[:10]
    recipe = detect_recipe(tmp_path / "blob", tmp_path / "tar", workers=2, restart_every=300_000)
    assert rebuild(recipe, data, 2, feed=100_003) == (tmp_path / "blob").read_bytes()
    del header, end_bit


def _peak_while_rebuilding(recipe: Recipe, data: bytes, feed: int) -> int:
    """Most bytes the Python allocator held at once while ``data`` was recompressed."""
    compressor = Recipe.from_json(recipe.to_json()).compressor(len(data), workers=2)
    tracemalloc.start()
    try:
        size = 0
        for i in range(0, len(data), feed):
            size += len(compressor.feed(data[i : i + feed]))
        size += len(compressor.finish())
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 0
    return peak


def test_a_long_unproven_segment_stays_within_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One 24 MiB segment (every point but the first and last dropped, as where proofs fail
    on binaries): what is held stays a few MiB, not the segment (twice, as before)."""
    data = mixed_tar(28 << 20)
    setting = ZlibSetting(6, 8, 0)
    points, end_bit = _honest_points(tmp_path, data, setting)
    kept = [points[0], points[-1]]
    assert kept[1].in_off - kept[0].in_off > 20 << 20 > SegmentedWriter.stream_min
    header = gzip_blob(b"", setting)[:10]
    recipe = gzip_recipe(6, header, restarts=kept, deflate_bits=end_bit)
    feed = 1 << 20
    peak = _peak_while_rebuilding(recipe, data, feed)
    # Held: the channel, fed chunks and their copies, the short segments' inputs (twice).
    short = max(kept[0].in_off, len(data) - kept[1].in_off) + (64 << 10)
    bound = STREAM_BUFFER + 8 * feed + 2 * short
    assert peak < bound < 20 << 20, (peak, bound)
    assert rebuild(recipe, data, 2) == (tmp_path / "blob").read_bytes()
    monkeypatch.setattr(SegmentedWriter, "stream_min", 1 << 40)  # held whole, as before
    assert _peak_while_rebuilding(recipe, data, feed) > 2 * (kept[1].in_off - kept[0].in_off)


def test_streamed_points_that_do_not_fit_fail_cleanly(
    tmp_path: Path, real_tar: bytes, stream_all: None
) -> None:
    setting = ZlibSetting(6, 8, 0)
    points, end_bit = _honest_points(tmp_path, real_tar, setting)
    header = gzip_blob(b"", setting)[:10]
    shifted = [ZlibPoint(p.in_off + 1000, p.bit_off) for p in points]
    for pts, bits in [(shifted, end_bit), (points, end_bit + 8)]:
        with pytest.raises(RecipeError, match="restart point"):
            rebuild(gzip_recipe(6, header, restarts=pts, deflate_bits=bits), real_tar, 2)


def test_an_abandoned_writer_stops_its_streaming_threads(real_tar: bytes, stream_all: None) -> None:
    """``close`` after an error elsewhere: the worker waiting for input is released."""
    setting = ZlibSetting(6, 8, 0)
    points = [ZlibPoint(1 << 20, 1 << 22), ZlibPoint(3 << 20, 1 << 23)]
    writer = ParallelZlibWriter(b"", setting, points, 1 << 24, len(real_tar), 2)
    writer.feed(real_tar[: 2 << 20])
    writer.close()  # returns: the streamed worker's read fails instead of waiting


def test_a_channel_bounds_what_it_holds() -> None:
    channel = SegmentChannel(limit=2 << 20)
    got: list[int] = []

    def consume() -> int:
        for chunk in channel.chunks():
            got.append(len(chunk))
        return sum(got)

    import threading

    worker = threading.Thread(target=consume)
    worker.start()
    for _ in range(20):
        channel.push(bytes(3 << 20))
    channel.close()
    worker.join()
    assert sum(got) == 60 << 20 and channel.peak <= (2 << 20) + (1 << 20)
    assert RESTART_INTERVAL * 2 == SegmentedWriter.stream_min
