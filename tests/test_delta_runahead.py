"""The writer runs ahead of a long unproven segment (krill/delta/segstream.py, segwriter.py).

With a spill directory a streamed segment's channel spills to disk instead of
making ``feed`` wait, and a new segment waits for a free worker rather than for
the oldest: the segments after a long stretch are compressed while it runs.
The bytes must stay zlib's, memory stays bounded, and the spill file goes away.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from krill.delta.detect import detect_recipe
from krill.delta.recipes import Recipe, gzip_recipe
from krill.delta.segstream import SegmentChannel
from krill.delta.segwriter import SegmentedWriter
from krill.delta.zlibrestarts import ParallelZlibWriter, ZlibSetting, parse_zlib_restarts
from tests.test_delta_zlib_restarts import gzip_blob
from tests.test_gogzip import python_tar

pytest.importorskip("krill._goflate", reason="the C extension is not built")


def _spill_files(d: Path) -> list[Path]:
    return list(d.glob(".krill-spill-*"))


def test_a_spilling_channel_never_makes_push_wait_and_keeps_order(tmp_path: Path) -> None:
    """No worker reads yet: every push returns, memory stays at the limit, the rest is on
    disk, and the worker then reads all of it back in order."""
    channel = SegmentChannel(limit=2 << 20, spill_dir=str(tmp_path))
    pieces = [bytes([i]) * (3 << 20) for i in range(6)]
    for piece in pieces:
        channel.push(piece)  # would wait forever without a spill directory
    channel.close()
    assert channel.peak <= (2 << 20) + (1 << 20)
    assert channel.spilled >= sum(map(len, pieces)) - channel.peak
    got = b"".join(bytes(chunk) for chunk in channel.chunks())
    assert got == b"".join(pieces)


def test_an_aborted_spilling_channel_frees_its_file(tmp_path: Path) -> None:
    channel = SegmentChannel(limit=1 << 20, spill_dir=str(tmp_path))
    channel.push(bytes(4 << 20))
    assert channel.spilled > 0
    channel.abort()
    channel.push(bytes(1 << 20))  # returns at once
    assert channel.spilled == 3 << 20  # nothing more spilled after the abort


@pytest.fixture(scope="module")
def data() -> bytes:
    return python_tar(6 << 20)


def _long_stretch_recipe(tmp_path: Path, data: bytes) -> Recipe:
    """Proven points, four dropped after the second: one long segment, short ones after."""
    setting = ZlibSetting(6, 8, 0)
    (tmp_path / "tar").write_bytes(data)
    (tmp_path / "blob").write_bytes(gzip_blob(data, setting))
    proven = detect_recipe(tmp_path / "blob", tmp_path / "tar", workers=2, restart_every=300_000)
    points = parse_zlib_restarts(proven.params["restarts"])
    assert len(points) >= 12
    kept = [*points[:2], *points[6:]]  # points[1] .. points[6]: one segment of ~1.5 MB
    header = gzip_blob(b"", setting)[:10]
    return gzip_recipe(6, header, restarts=kept, deflate_bits=proven.params["deflate_bits"])


@pytest.mark.parametrize("workers,feed", [(2, 1 << 20), (2, 70_001), (3, 9 << 20)])
def test_running_ahead_keeps_zlibs_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, workers: int, feed: int
) -> None:
    recipe = _long_stretch_recipe(tmp_path, data)
    monkeypatch.setattr(SegmentedWriter, "stream_min", 600_000)  # the long one streams
    spill = tmp_path / "spill"
    spill.mkdir()
    compressor = recipe.compressor(len(data), workers=workers, spill_dir=str(spill))
    out = [compressor.feed(data[i : i + feed]) for i in range(0, len(data), feed)]
    assert b"".join(out) + compressor.finish() == (tmp_path / "blob").read_bytes()
    assert _spill_files(spill) == []  # unlinked from the start


def test_segments_after_a_long_one_start_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes
) -> None:
    """The long segment's worker is held (its input stays unread) until a later segment
    has started: with a spill directory the writer gets there; it did not before."""
    recipe = _long_stretch_recipe(tmp_path, data)
    monkeypatch.setattr(SegmentedWriter, "stream_min", 600_000)
    later_started = threading.Event()
    waited: list[bool] = []
    streamed = ParallelZlibWriter._streamed
    compress = ParallelZlibWriter._compress

    def held_stream(self: ParallelZlibWriter, segment):  # type: ignore[no-untyped-def]
        work = streamed(self, segment)

        def run(chunks, emit):  # type: ignore[no-untyped-def]
            waited.append(later_started.wait(timeout=60))  # False: nothing ran ahead
            return work(chunks, emit)

        return run

    def noting_compress(self: ParallelZlibWriter, segment, data):  # type: ignore[no-untyped-def]
        if segment.start is not None and segment.start.in_off > 2 << 20:
            later_started.set()
        return compress(self, segment, data)

    monkeypatch.setattr(ParallelZlibWriter, "_streamed", held_stream)
    monkeypatch.setattr(ParallelZlibWriter, "_compress", noting_compress)
    compressor = recipe.compressor(len(data), workers=2, spill_dir=str(tmp_path))
    out = [compressor.feed(data[i : i + (1 << 20)]) for i in range(0, len(data), 1 << 20)]
    assert b"".join(out) + compressor.finish() == (tmp_path / "blob").read_bytes()
    assert waited == [True]
