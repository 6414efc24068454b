"""Parallel recompression of zlib-made gzip from proven restart points (zlibrestarts.py).

The block scanner (``krill._goflate.deflate_blocks``) must agree with zlib on
every stream zlib writes and refuse what zlib's inflate refuses; segments
compressed from byte-aligned block boundaries and joined must be zlib's own
bytes on 1 or 2 workers; a wrong point is dropped at the origin, and a recipe
whose points do not fit the tar fails cleanly on the node.
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill.delta import apply_delta, create_delta, read_delta_header
from krill.delta.detect import detect_recipe
from krill.delta.recipes import Recipe, RecipeError, gzip_recipe
from krill.delta.zlibrestarts import (
    ZlibPoint,
    ZlibSetting,
    block_boundaries,
    plan_points,
    prove_zlib_restarts,
)
from tests.delta_crafting import Pair, join
from tests.test_gogzip import layer_like, python_tar

_goflate = pytest.importorskip("krill._goflate", reason="the C extension is not built")


def raw_deflate(
    data: bytes, setting: ZlibSetting, flushes: Sequence[tuple[int, int]] = ()
) -> bytes:
    """zlib's raw deflate of ``data``, flushed (mode) after each given input offset."""
    deflate = setting.compressobj()
    out, pos = [], 0
    for at, mode in sorted(flushes):
        out += [deflate.compress(data[pos:at]), deflate.flush(mode)]
        pos = at
    return b"".join([*out, deflate.compress(data[pos:]), deflate.flush()])


def gzip_blob(data: bytes, setting: ZlibSetting) -> bytes:
    header = gzip.compress(b"", compresslevel=setting.level, mtime=0)[:10]
    trailer = zlib.crc32(data).to_bytes(4, "little") + len(data).to_bytes(4, "little")
    return header + raw_deflate(data, setting) + trailer


def rebuild(recipe: Recipe, data: bytes, workers: int, feed: int = 1 << 20) -> bytes:
    compressor = Recipe.from_json(recipe.to_json()).compressor(len(data), workers=workers)
    out = [compressor.feed(data[i : i + feed]) for i in range(0, len(data), feed)]
    return b"".join(out) + compressor.finish()


# --- the block scanner -------------------------------------------------------------------------


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=layer_like(),
    level=st.integers(0, 9),
    mem_level=st.sampled_from([1, 8, 9]),
    strategy=st.sampled_from([zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED, zlib.Z_FIXED]),
    flush_at=st.lists(
        st.tuples(st.floats(0, 1), st.sampled_from([zlib.Z_SYNC_FLUSH, zlib.Z_FULL_FLUSH])),
        max_size=4,
    ),
)
def test_scanner_finds_every_block_zlib_writes(
    data: bytes, level: int, mem_level: int, strategy: int, flush_at: list[tuple[float, int]]
) -> None:
    setting = ZlibSetting(level, mem_level, strategy)
    flushes = [(int(f * len(data)), mode) for f, mode in flush_at]
    stream = raw_deflate(data, setting, flushes)
    blocks, end_bit, size = _goflate.deflate_blocks(b"\x1f\x8b" + stream, 2)
    assert size == len(data) and (end_bit + 7) // 8 == len(stream)
    assert blocks[0][:2] == (0, 0)
    assert all(a[0] < b[0] and a[1] <= b[1] for a, b in itertools.pairwise(blocks))
    for bit, out, btype in blocks:  # each block inflates from its start: its offsets are right
        assert btype in (0, 1, 2)
        if bit % 8 == 0 and out > 0:
            window = data[max(0, out - 32768) : out]
            tail = zlib.decompressobj(-15, zdict=window).decompress(stream[bit // 8 :])
            assert tail == data[out:]
    # After a sync or full flush, zlib's next block starts on a byte at that input offset.
    deflate, pos, starts = setting.compressobj(), 0, set()
    out_len = 0
    for at, mode in sorted(flushes):
        out_len += len(deflate.compress(data[pos:at])) + len(deflate.flush(mode))
        pos = at
        starts.add((out_len * 8, at))
    assert starts <= {(bit, out) for bit, out, _ in blocks} | {(end_bit + 7 & ~7, len(data))}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=layer_like(),
    level=st.integers(1, 9),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=3),
)
def test_scanner_refuses_what_zlib_refuses(
    data: bytes, level: int, cut: float, flips: list[tuple[float, int]]
) -> None:
    stream = bytearray(raw_deflate(data, ZlibSetting(level, 8, 0)))
    for where, xor in flips:
        stream[int(where * (len(stream) - 1))] ^= xor
    stream = stream[: max(1, int(len(stream) * cut))] if cut < 0.5 else stream
    inflate = zlib.decompressobj(-15)
    try:
        expected = len(inflate.decompress(bytes(stream)))
        zlib_ok = inflate.eof
    except zlib.error:
        zlib_ok = False
    if zlib_ok:
        assert _goflate.deflate_blocks(bytes(stream))[2] == expected
    else:
        with pytest.raises(ValueError, match="invalid deflate stream"):
            _goflate.deflate_blocks(bytes(stream))


def test_scanner_refuses_bad_offsets_and_empty_input() -> None:
    with pytest.raises(ValueError):
        _goflate.deflate_blocks(b"abc", 4)
    with pytest.raises(ValueError, match="truncated"):
        _goflate.deflate_blocks(b"", 0)


# --- parallel recompression ----------------------------------------------------------------


@pytest.fixture(scope="module")
def real_tar() -> bytes:
    return python_tar(5 << 20)


@pytest.mark.parametrize("mem_level", [8, 9])
@pytest.mark.parametrize("level", [4, 5, 6, 7, 8, 9])
def test_round_trip_is_zlibs_bytes_on_one_and_two_workers(
    tmp_path: Path, real_tar: bytes, level: int, mem_level: int
) -> None:
    setting = ZlibSetting(level, mem_level, zlib.Z_DEFAULT_STRATEGY)
    blob = gzip_blob(real_tar, setting)
    (tmp_path / "tar").write_bytes(real_tar)
    (tmp_path / "blob").write_bytes(blob)
    recipe = detect_recipe(tmp_path / "blob", tmp_path / "tar", workers=2, restart_every=400_000)
    assert recipe.params["level"] == level and recipe.params["mem_level"] == mem_level
    assert len(recipe.params["restarts"]) >= 4
    one, two = rebuild(recipe, real_tar, 1), rebuild(recipe, real_tar, 2, feed=70_001)
    assert one == two == blob


def test_levels_1_to_3_stay_sequential(tmp_path: Path, real_tar: bytes) -> None:
    (tmp_path / "tar").write_bytes(real_tar)
    for level in (1, 3):
        (tmp_path / "blob").write_bytes(gzip_blob(real_tar, ZlibSetting(level, 8, 0)))
        recipe = detect_recipe(tmp_path / "blob", tmp_path / "tar", restart_every=400_000)
        assert recipe.params["level"] == level and "restarts" not in recipe.params
        with pytest.raises(RecipeError, match="in sequence"):
            doc = {**recipe.to_json(), "restarts": [[400_000, 800_000]], "deflate_bits": 1 << 30}
            Recipe.from_json(doc)


def _honest_points(tmp: Path, data: bytes, setting: ZlibSetting) -> tuple[list[ZlibPoint], int]:
    """Planned points (not yet proven) and the stream's length in bits."""
    (tmp / "tar").write_bytes(data)
    (tmp / "blob").write_bytes(gzip_blob(data, setting))
    boundaries, end_bit = block_boundaries(tmp / "blob", 10)
    return plan_points(boundaries, len(data), 300_000), end_bit


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda p: ZlibPoint(p.in_off + 1, p.bit_off),
        lambda p: ZlibPoint(p.in_off - 4096, p.bit_off),
        lambda p: ZlibPoint(p.in_off, p.bit_off + 8),
        lambda p: ZlibPoint(p.in_off, p.bit_off - 64),
    ],
    ids=["tar-offset+1", "tar-offset-4k", "bit-offset+8", "bit-offset-64"],
)
def test_a_corrupt_point_is_dropped_at_the_origin_and_compressed_in_sequence(
    tmp_path: Path, real_tar: bytes, corrupt: Callable[[ZlibPoint], ZlibPoint]
) -> None:
    setting = ZlibSetting(6, 8, 0)
    points, end_bit = _honest_points(tmp_path, real_tar, setting)
    assert len(points) >= 5
    bad = corrupt(points[2])
    tampered = [*points[:2], bad, *points[3:]]
    args = (setting, tampered, tmp_path / "tar", tmp_path / "blob", 10, end_bit, 2)
    kept = prove_zlib_restarts(*args)
    assert bad not in kept and points[1] in kept and points[3] in kept
    recipe = gzip_recipe(6, gzip_blob(b"", setting)[:10], restarts=kept, deflate_bits=end_bit)
    assert rebuild(recipe, real_tar, 2) == (tmp_path / "blob").read_bytes()


def test_points_that_do_not_fit_the_tar_fail_cleanly(tmp_path: Path, real_tar: bytes) -> None:
    setting = ZlibSetting(6, 8, 0)
    points, end_bit = _honest_points(tmp_path, real_tar, setting)
    header = gzip_blob(b"", setting)[:10]
    shifted = [ZlibPoint(p.in_off + 1000, p.bit_off) for p in points]
    other = python_tar(4 << 20)[len(real_tar) // 3 :][: len(real_tar)]
    for tar, pts in [(real_tar, shifted), (other, points)]:
        with pytest.raises(RecipeError, match="restart point"):
            rebuild(gzip_recipe(6, header, restarts=pts, deflate_bits=end_bit), tar, 2)
    past = [ZlibPoint(len(real_tar) + 10, 1 << 30)]
    with pytest.raises(RecipeError, match="past the end"):
        rebuild(gzip_recipe(6, header, restarts=past, deflate_bits=1 << 31), real_tar, 2)
    with pytest.raises(RecipeError, match="restart point"):  # the stream ends elsewhere
        rebuild(gzip_recipe(6, header, restarts=points, deflate_bits=end_bit + 8), real_tar, 2)


@pytest.mark.parametrize(
    "restarts",
    [[[100]], [[100, 800], [50, 1600]], [[0, 800]], "x", [[True, 800]], [[100, 1 << 40]]],
)
def test_malformed_points_are_refused(restarts: object) -> None:
    doc = {**gzip_recipe(6).to_json(), "deflate_bits": 1 << 30}
    with pytest.raises(RecipeError, match="bad gzip-zlib recipe"):
        Recipe.from_json({**doc, "restarts": restarts})
    del doc["deflate_bits"]  # points need the stream's length
    with pytest.raises(RecipeError, match="deflate_bits"):
        Recipe.from_json({**doc, "restarts": [[100, 800]]})


def test_a_delta_carries_points_and_one_without_them_still_applies(tmp_path: Path) -> None:
    base, target = tmp_path / "base.tgz", tmp_path / "target.tgz"
    base.write_bytes(gzip_blob(python_tar(8 << 20), ZlibSetting(6, 8, 0)))
    target.write_bytes(gzip_blob(python_tar(9 << 20), ZlibSetting(6, 8, 0)))
    delta = tmp_path / "d.krd"
    create_delta(base, target, delta)
    assert len(read_delta_header(delta).recipe["restarts"]) >= 1
    for workers in (1, 2):
        out = tmp_path / f"out{workers}.tgz"
        apply_delta(base, delta, out, workers=workers)
        assert out.read_bytes() == target.read_bytes()

    header, ops = Pair(base, delta, b"").parts()
    end_bit = header["recipe"]["deflate_bits"]
    del header["recipe"]["restarts"], header["recipe"]["deflate_bits"]  # as older deltas
    old = tmp_path / "old.krd"
    old.write_bytes(join(header, ops))
    apply_delta(base, old, tmp_path / "old.tgz", workers=2)
    assert (tmp_path / "old.tgz").read_bytes() == target.read_bytes()
    assert json.dumps(read_delta_header(old).recipe).count("restarts") == 0

    header["recipe"]["restarts"] = [[1 << 20, 8 * 400_000 + 3]]  # a point of some other stream
    header["recipe"]["deflate_bits"] = end_bit
    wrong = tmp_path / "wrong.krd"
    wrong.write_bytes(join(header, ops))
    with pytest.raises(RecipeError):
        apply_delta(base, wrong, tmp_path / "wrong.tgz", workers=2)
    assert not (tmp_path / "wrong.tgz").exists()


def test_plan_points_takes_the_nearest_aligned_boundary() -> None:
    rng = random.Random(3)
    bounds = sorted({(8 * rng.randrange(1, 10**7), rng.randrange(1, 10**7)) for _ in range(500)})
    bounds = [
        (bit, out) for (bit, _), out in zip(bounds, sorted(o for _, o in bounds), strict=True)
    ]
    points = plan_points(bounds, 10**7, 1_000_000)
    assert 7 <= len(points) <= 10
    assert all(b.in_off - a.in_off > 500_000 for a, b in itertools.pairwise(points))
