"""Parallel recompression of Go-made gzip from proven restart points (krill/delta/restarts.py).

Segments compressed on several threads and joined must be Go's own bytes
(the oracle, tests/goflate) and the sequential encoder's; a restart point
that does not reproduce its segment is dropped at the origin, and a delta
whose recipe has no restart points (made before them) still applies.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill.delta import apply_delta, create_delta, read_delta_header
from krill.delta.detect import detect_recipe
from krill.delta.gogzip import GoGzipWriter, go_header
from krill.delta.recipes import Recipe, RecipeError, go_gzip_recipe
from krill.delta.restarts import (
    LOOKAHEAD,
    RESTART_INTERVAL,
    TAIL_MIN,
    ParallelGoGzipWriter,
    RestartPoint,
    Segment,
    compress_segment,
    parse_restarts,
    prove_restarts,
    segments,
    thin_points,
)
from tests.delta_crafting import Pair, join
from tests.goflate.oracle import GoOracle
from tests.test_gogzip import layer_like, mixed, python_tar, text

_goflate = pytest.importorskip("krill._goflate", reason="the C extension is not built")

PARALLEL = [4, 5, 6, 7, 8, 9]


def sequential(data: bytes, level: int, record_every: int = 0) -> tuple[bytes, list[RestartPoint]]:
    """Go's gzip by the sequential encoder, with the restart points it noted."""
    writer = GoGzipWriter(go_header(level), level, record_every=record_every)
    blob = writer.feed(data) + writer.finish()
    return blob, writer.restart_points()


def parallel(
    data: bytes, level: int, points: list[RestartPoint], workers: int = 2, feed: int = 1 << 20
) -> bytes:
    writer = ParallelGoGzipWriter(go_header(level), level, points, len(data), workers)
    out = [writer.feed(data[i : i + feed]) for i in range(0, len(data), feed)]
    return b"".join(out) + writer.finish()


def proven(
    tmp: Path, data: bytes, blob: bytes, level: int, points: list[RestartPoint]
) -> tuple[RestartPoint, ...]:
    (tmp / "tar").write_bytes(data)
    (tmp / "blob").write_bytes(blob)
    return prove_restarts(level, points, tmp / "tar", tmp / "blob", 10, 2)


@pytest.mark.parametrize("level", PARALLEL)
@pytest.mark.parametrize("kind", ["real-files", "mixed", "text"])
def test_parallel_segments_are_gos_bytes(go_oracle: GoOracle, level: int, kind: str) -> None:
    rng = random.Random(level)
    data = {
        "real-files": lambda: python_tar(2 << 20),
        "mixed": lambda: mixed(rng, 3 << 19),
        "text": lambda: text(rng, 3 << 19),
    }[kind]()
    blob, points = sequential(data, level, record_every=100_000)
    assert len(points) >= 3
    assert blob == go_oracle.gzip(data, level)
    for workers in (2, 3):
        assert parallel(data, level, points, workers) == blob, f"{workers} workers"


def test_every_point_noted_at_a_block_boundary_restarts_exactly() -> None:
    """Points every block (2^14 tokens), both kinds: after a match and with a pending literal."""
    data = python_tar(1 << 20)
    blob, points = sequential(data, 6, record_every=1)
    assert {p.avail for p in points} == {0, 1}
    assert parallel(data, 6, points, workers=2, feed=70_001) == blob


@pytest.mark.parametrize("level", [6, 9])
def test_origin_proves_every_honest_point(tmp_path: Path, level: int) -> None:
    data = python_tar(2 << 20)
    blob, points = sequential(data, level, record_every=150_000)
    assert proven(tmp_path, data, blob, level, points) == tuple(points)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda p: RestartPoint(p.in_off, p.bit_off, p.win // 4, p.avail, p.length, p.offset),
        lambda p: RestartPoint(p.in_off, p.bit_off + 8, p.win, p.avail, p.length, p.offset),
        lambda p: RestartPoint(p.in_off, p.bit_off, p.win, 1, 258, 1),
        lambda p: RestartPoint(p.in_off, p.bit_off, p.win, 1, 258, 40_000),
    ],
    ids=["window-offset", "bit-offset", "pending-match", "impossible-state"],
)
def test_a_corrupt_restart_point_is_dropped_and_its_segment_compressed_in_sequence(
    tmp_path: Path, corrupt: Callable[[RestartPoint], RestartPoint]
) -> None:
    data = python_tar(2 << 20)
    blob, points = sequential(data, 6, record_every=150_000)
    bad = corrupt(points[3])
    tampered = [*points[:3], bad, *points[4:]]
    kept = proven(tmp_path, data, blob, 6, tampered)
    assert bad not in kept and len(kept) >= len(points) - 2
    assert points[2] in kept and points[5] in kept
    assert parallel(data, 6, list(kept)) == blob


def test_a_node_refuses_unproven_points_instead_of_writing_other_bytes(tmp_path: Path) -> None:
    """Points no origin proved (crafted): the segment does not end where it should."""
    data = python_tar(2 << 20)
    _, points = sequential(data, 6, record_every=150_000)
    bad = RestartPoint(points[3].in_off, points[3].bit_off, points[3].win, 1, 258, 1)
    recipe = go_gzip_recipe(6, go_header(6), [*points[:3], bad, *points[4:]])
    compressor = Recipe.from_json(recipe.to_json()).compressor(len(data), workers=2)
    with pytest.raises(RecipeError, match="restart points"):
        for i in range(0, len(data), 1 << 18):
            compressor.feed(data[i : i + (1 << 18)])
        compressor.finish()


@pytest.mark.parametrize(
    "restarts",
    [
        "x",
        [[1, 2, 3]],
        [[100, 800, 70_000, 0, 3, 0]],
        [[100, 800, 50, 2, 3, 0]],
        [[100, 800, 50, 0, 300, 0]],
        [[100, 800, 50, 0, 3, 0], [90, 900, 50, 0, 3, 0]],
        [[100, 800, 50, True, 3, 0]],
        [[100_000, 800, 0, 0, 3, 0], [100_001, 900, 65_536, 0, 3, 0]],
    ],
)
def test_malformed_restart_points_are_refused(restarts: object) -> None:
    with pytest.raises(RecipeError, match="bad gzip-go recipe"):
        Recipe.from_json(
            {"kind": "gzip-go", "level": 6, "header": go_header(6).hex(), "restarts": restarts}
        )


def test_restart_points_past_the_tar_are_refused() -> None:
    recipe = go_gzip_recipe(6, go_header(6), parse_restarts([[100_000, 800, 50, 0, 3, 0]]))
    with pytest.raises(RecipeError, match="past the end"):
        recipe.compressor(100_000, workers=2)


def test_restart_points_at_a_sequential_level_are_refused() -> None:
    doc = {"kind": "gzip-go", "level": 2, "header": go_header(2).hex()}
    with pytest.raises(RecipeError, match="in sequence"):
        Recipe.from_json({**doc, "restarts": [[100, 800, 50, 0, 3, 0]]})


def test_detection_records_proven_points_only_at_levels_4_to_9(
    go_oracle: GoOracle, tmp_path: Path
) -> None:
    data = python_tar(3 << 20)
    (tmp_path / "tar").write_bytes(data)
    for level, expect_points in [(6, True), (3, False), (1, False)]:
        (tmp_path / "blob").write_bytes(go_oracle.gzip(data, level))
        recipe = detect_recipe(tmp_path / "blob", tmp_path / "tar", restart_every=500_000)
        assert recipe.kind == "gzip-go" and recipe.params["level"] == level
        assert bool(recipe.params.get("restarts")) == expect_points
        rebuilt = recipe.compressor(len(data), workers=2)
        assert rebuilt.feed(data) + rebuilt.finish() == (tmp_path / "blob").read_bytes()


def _go_pair(tmp: Path, oracle: GoOracle) -> tuple[Path, Path]:
    """Two Go-made level-6 layers of real files, large enough for restart points (> 8 MiB)."""
    base, target = tmp / "base.tgz", tmp / "target.tgz"
    base.write_bytes(oracle.gzip(python_tar(8 << 20), 6))
    target.write_bytes(oracle.gzip(python_tar(9 << 20), 6))
    return base, target


def test_a_delta_with_restart_points_applies_in_parallel_and_one_without_them_in_sequence(
    go_oracle: GoOracle, tmp_path: Path
) -> None:
    base, target = _go_pair(tmp_path, go_oracle)
    delta = tmp_path / "d.krd"
    create_delta(base, target, delta)
    recipe = read_delta_header(delta).recipe
    assert len(recipe["restarts"]) >= 2
    for workers in (1, 2):
        out = tmp_path / f"out{workers}.tgz"
        apply_delta(base, delta, out, workers=workers)
        assert out.read_bytes() == target.read_bytes()

    header, ops = Pair(base, delta, b"").parts()
    del header["recipe"]["restarts"]  # as deltas made before restart points
    old = tmp_path / "old.krd"
    old.write_bytes(join(header, ops))
    apply_delta(base, old, tmp_path / "old.tgz", workers=2)
    assert (tmp_path / "old.tgz").read_bytes() == target.read_bytes()
    assert json.dumps(read_delta_header(old).recipe).count("restarts") == 0


def test_planned_segments_shrink_toward_the_end_of_the_tar() -> None:
    """The last segments start only once the rebuild nears its end: they are planned short
    (each at most half of what is left), so no long one runs alone on one core at the end."""
    tar_size = 45_045_760
    recorded = [RestartPoint(off, 8 * off, 0, 0, 3, 0) for off in range(100_000, tar_size, 130_000)]
    kept = thin_points(recorded, tar_size)
    starts = [0, *(p.in_off for p in kept)]
    lengths = [b - a for a, b in itertools.pairwise([*starts, tar_size])]
    assert all(n <= RESTART_INTERVAL + 130_000 for n in lengths)
    assert sum(n > RESTART_INTERVAL // 2 for n in lengths) >= 9  # the body: ~4 MiB each
    for start, n in zip(starts, lengths, strict=True):  # the tail: never over half of the rest
        assert n <= max(TAIL_MIN, (tar_size - start) // 2) + 130_000
    assert lengths[-1] <= TAIL_MIN
    assert len(kept) <= tar_size // RESTART_INTERVAL + 5
    assert thin_points(recorded, tar_size, every=300_000)[0].in_off in (230_000, 360_000)


# --- fuzzing the C entry points --------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=layer_like(),
    level=st.sampled_from(PARALLEL),
    every=st.integers(1, 120_000),
    keep=st.lists(st.booleans(), max_size=40),
    workers=st.integers(2, 3),
    feed=st.integers(1, 200_000),
)
def test_any_subset_of_recorded_points_gives_the_sequential_stream(
    data: bytes, level: int, every: int, keep: list[bool], workers: int, feed: int
) -> None:
    blob, points = sequential(data, level, record_every=every)
    chosen = [p for i, p in enumerate(points) if i >= len(keep) or keep[i]]
    assert parallel(data, level, chosen, workers, feed) == blob


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(st.binary(max_size=3000), layer_like()),
    level=st.sampled_from(PARALLEL),
    start=st.tuples(
        st.integers(-5, 70_000),
        st.integers(-1, 2),
        st.integers(0, 300),
        st.integers(-1, 40_000),
        st.integers(0, 7),
    ),
    stop=st.integers(-1, 300_000),
    final=st.booleans(),
)
def test_segment_survives_any_start_state(
    data: bytes, level: int, start: tuple[int, int, int, int, int], stop: int, final: bool
) -> None:
    """Crafted states are refused or compress something; never a crash or a hang."""
    try:
        out, nbits, reached = _goflate.segment(level, data, start, stop, final)
    except ValueError:
        return
    assert 0 <= nbits <= len(out) * 8 and (not out or nbits > (len(out) - 1) * 8)
    assert isinstance(reached, bool)


def test_segment_refuses_sequential_levels_and_bad_lead_bits() -> None:
    for level in (1, 2, 3, 0, -2):
        with pytest.raises(ValueError, match="levels 4-9"):
            _goflate.segment(level, b"abc", None, -1, True)
    with pytest.raises(ValueError, match="0-7 bits"):
        _goflate.segment(6, b"abc" * 1000, (0, 0, 3, 0, 8), -1, True)
    with pytest.raises(ValueError, match="levels 4-9"):
        _goflate.Deflater(2, record_every=1000)


def test_segment_ranges_cover_the_stream() -> None:
    points = parse_restarts([[5_000_000, 80, 40_000, 0, 3, 0], [9_000_000, 160, 50_000, 1, 7, 9]])
    parts = segments(points)
    assert [s.input_range(12_000_000) for s in parts] == [
        (0, 5_000_000 + LOOKAHEAD),
        (4_960_000, 9_000_000 + LOOKAHEAD),
        (8_950_000, 12_000_000),
    ]
    assert compress_segment(6, Segment(None, None), b"").nbits > 0


@pytest.mark.slow
def test_segments_past_the_hash_offset_rebase_are_gos_bytes(
    go_oracle: GoOracle, tmp_path: Path
) -> None:
    """Over 16 MiB Go rebases its hash offsets; restarted encoders start from a fresh offset."""
    data = python_tar(20 << 20)
    blob, points = sequential(data, 4, record_every=2 << 20)
    assert points[-1].in_off > 17 << 20
    assert proven(tmp_path, data, blob, 4, points) == tuple(points)
    assert parallel(data, 4, points) == blob == go_oracle.gzip(data, 4)
