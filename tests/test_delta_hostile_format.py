"""The delta container under attack: truncation, flipped bytes, lying or malformed headers."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill.delta import DeltaFormatError, RecipeError, apply_delta, create_delta
from krill.delta import format as fmt
from krill.delta.encode import EncodeOptions
from tests.delta_crafting import Pair, apply_fails, header_bytes, join, make_pair, resign
from tests.test_delta_support import Entry, build_tar, compress, mutated_bytes

_counter = iter(range(1_000_000))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return make_pair(tmp_path_factory.mktemp("pair"))


def test_valid_delta_applies(tmp_path: Path, pair: Pair) -> None:
    assert apply_delta(pair.base, pair.delta, tmp_path / "out").path.read_bytes() == pair.target


def test_output_is_only_written_at_out(tmp_path: Path, pair: Pair) -> None:
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    apply_delta(pair.base, pair.delta, out_dir / "layer.tgz")
    assert [p.name for p in out_dir.iterdir()] == ["layer.tgz"]
    assert (out_dir / "layer.tgz").read_bytes() == pair.target


@pytest.mark.parametrize("cut", [0, 5, 13, 40, 200, -33, -32, -1])
def test_truncated_delta_fails_cleanly(tmp_path: Path, pair: Pair, cut: int) -> None:
    apply_fails(tmp_path, pair.base, pair.delta.read_bytes()[:cut])


def test_truncated_delta_with_valid_trailer_fails(tmp_path: Path, pair: Pair) -> None:
    header, ops = pair.parts()
    for i, cut in enumerate([1, len(ops) // 2, len(ops) - 1]):
        apply_fails(tmp_path / str(i), pair.base, join(header, ops[:cut]))


def test_header_claiming_huge_sizes_is_refused(tmp_path: Path, pair: Pair) -> None:
    header, ops = pair.parts()
    header["target"]["tar_size"] = 2**60
    assert "tar_size" in apply_fails(tmp_path, pair.base, join(header, ops))


@pytest.mark.parametrize("recipe", ["gzip", "identity"])
def test_tar_size_the_blob_cannot_hold_is_refused(tmp_path: Path, pair: Pair, recipe: str) -> None:
    header, ops = pair.parts()
    header["target"]["tar_size"] = 2**40  # under MAX_TAR_BYTES, far over 1040 x a 40 KB blob
    if recipe == "identity":
        header["recipe"] = {"kind": "identity"}
        header["target"]["tar_size"] = header["target"]["size"] + 512
    error = apply_fails(tmp_path, pair.base, join(header, ops))
    assert ("maximum ratio" if recipe == "gzip" else "must equal its size") in error, error


def test_deeply_nested_header_is_a_format_error() -> None:
    with pytest.raises(DeltaFormatError, match="nested too deeply"):
        fmt.read_header(io.BytesIO(header_bytes("[" * 100_000 + "]" * 100_000)))


def test_infinity_in_header_is_a_format_error(tmp_path: Path, pair: Pair) -> None:
    header, ops = pair.parts()
    text = json.dumps(header).replace('"level": 6', '"level": Infinity')
    assert "Infinity" in text
    data = resign(header_bytes(text) + ops + bytes(32))
    assert "Infinity is not a JSON number" in apply_fails(tmp_path, pair.base, data)


def test_version_1_deltas_still_apply(tmp_path: Path) -> None:
    """Deltas written before OP_HDIFF existed (format 1) are read as before."""
    rng = random.Random(21)
    files = {f"bin/b{i}": Entry("file", rng.randbytes(20_000)) for i in range(2)}
    target_files = {n: Entry("file", mutated_bytes(rng, e.data, 30)) for n, e in files.items()}
    base, target = tmp_path / "base.tgz", tmp_path / "target.tgz"
    base.write_bytes(compress(build_tar(files), "gzip6"))
    target.write_bytes(compress(build_tar(target_files), "gzip6"))
    delta = tmp_path / "v2.krd"
    create_delta(base, target, delta, EncodeOptions(diff_engine="bsdiff"))
    header, ops = Pair(base, delta, b"").parts()
    header["format"] = "krill-delta/1"
    v1 = tmp_path / "v1.krd"
    v1.write_bytes(join(header, ops, version=1))
    assert apply_delta(base, v1, tmp_path / "out").path.read_bytes() == target.read_bytes()
    unknown = fmt.VERSION + 1
    assert f"version {unknown}" in apply_fails(
        tmp_path / "next", base, join(header, ops, version=unknown)
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=4)
)
def test_random_corruption_never_escapes(
    tmp_path: Path, pair: Pair, flips: list[tuple[int, int]]
) -> None:
    """Flipped bytes (trailer re-signed) end in a clear error or the exact target, nothing else."""
    data = bytearray(pair.delta.read_bytes())
    for pos, xor in flips:
        data[pos % (len(data) - 32)] ^= xor
    tmp = tmp_path / f"c{next(_counter)}"
    tmp.mkdir()
    crafted = tmp / "crafted.krd"
    crafted.write_bytes(resign(bytes(data)))
    out_dir = tmp / "out"
    out_dir.mkdir()
    try:
        result = apply_delta(pair.base, crafted, out_dir / "layer")
    except (DeltaFormatError, RecipeError):
        assert list(out_dir.iterdir()) == []
    else:
        assert result.path.read_bytes() == pair.target
