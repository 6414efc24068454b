"""Deltas that do not fit this node or this pull: another base, recipe, libzstd or target.

Each is refused with a message that says which, before any output appears;
the agent's expected digest and size are checked before the base is read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from krill.delta import DeltaFormatError, RecipeError, read_delta_header, rebuild_layer
from krill.delta.recipes import ZSTD_VERSION, Recipe, gzip_recipe, zstd_recipe
from tests.delta_crafting import Pair, apply_fails, join, make_pair
from tests.test_delta_support import Entry, build_tar


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return make_pair(tmp_path_factory.mktemp("pair"))


def test_wrong_base_is_refused(tmp_path: Path, pair: Pair) -> None:
    other = tmp_path / "other.tar"
    other.write_bytes(build_tar({"x": Entry("file", b"other")}))
    message = apply_fails(tmp_path / "t", other, pair.delta.read_bytes())
    assert "base layer does not match" in message


def test_zstd_recipe_from_another_libzstd_is_refused(tmp_path: Path, pair: Pair) -> None:
    header, ops = pair.parts()
    header["recipe"] = {
        "kind": "zstd",
        "level": 3,
        "checksum": False,
        "content_size": True,
        "libzstd": "0.0.1",
    }
    message = apply_fails(tmp_path, pair.base, join(header, ops), RecipeError)
    assert "libzstd 0.0.1" in message


@pytest.mark.parametrize("kind", ["gzip-zlib", "zstd"])
@pytest.mark.parametrize("level", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_recipe_level_is_a_recipe_error(kind: str, level: float) -> None:
    doc = (gzip_recipe() if kind == "gzip-zlib" else zstd_recipe()).to_json()
    assert doc.get("libzstd", ZSTD_VERSION) == ZSTD_VERSION
    doc["level"] = level
    with pytest.raises(RecipeError, match=f"bad {kind} recipe"):
        Recipe.from_json(doc)


def test_rebuild_layer_checks_the_wanted_target_before_any_work(tmp_path: Path, pair: Pair) -> None:
    """The agent passes the manifest's digest and size; a mismatch fails before the base is read."""
    want = read_delta_header(pair.delta).target
    missing_base = tmp_path / "no-such-base"  # never opened when the header already disagrees
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DeltaFormatError, match="not the wanted layer"):
        rebuild_layer(missing_base, pair.delta, out, expected_digest="sha256:" + "0" * 64)
    with pytest.raises(DeltaFormatError, match="the manifest says"):
        rebuild_layer(missing_base, pair.delta, out, expected_size=want.size + 1)
    corrupt = tmp_path / "corrupt.krd"  # the header is checked even before the trailer's hash
    corrupt.write_bytes(pair.delta.read_bytes()[:-1] + b"\0")
    with pytest.raises(DeltaFormatError, match="not the wanted layer"):
        rebuild_layer(missing_base, corrupt, out, expected_digest="sha256:" + "0" * 64)
    assert list(out.iterdir()) == []
    result = rebuild_layer(
        pair.base, pair.delta, out, expected_digest=want.digest, expected_size=want.size
    )
    assert result.path.read_bytes() == pair.target
