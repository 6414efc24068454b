"""The ``gzip-go`` recipe: Go-made layers detected by reproduction, refused where it can't run,
and rebuilt byte for byte by ``krill delta create|apply`` (blobs gzipped by Go itself)."""

from __future__ import annotations

import random
import subprocess
import zlib
from pathlib import Path

import pytest

from krill.delta import detect, recipes
from krill.delta.blobread import CHUNK
from krill.delta.compressors import Compressor
from krill.delta.detect import detect_recipe
from krill.delta.gogzip import GO_LEVELS, go_header
from krill.delta.recipes import Recipe, RecipeError, go_gzip_recipe
from tests.components import krill_command
from tests.goflate.oracle import GoOracle
from tests.imagebuild import make_tar, realistic_files
from tests.test_delta_support import compress, mutated_bytes

pytest.importorskip("krill._goflate", reason="the C extension is not built")


def _layer(seed: int, count: int = 60) -> bytes:
    return make_tar(realistic_files(seed, count))


def _detect(tmp: Path, blob: bytes, tar: bytes) -> Recipe:
    (tmp / "blob").write_bytes(blob)
    (tmp / "tar").write_bytes(tar)
    return detect_recipe(tmp / "blob", tmp / "tar")


def _rebuild(recipe: Recipe, tar: bytes) -> bytes:
    c = recipe.compressor(len(tar))
    return b"".join(c.feed(tar[i : i + 100_000]) for i in range(0, len(tar), 100_000)) + c.finish()


@pytest.mark.parametrize("level", GO_LEVELS)
def test_go_made_blob_is_detected_and_reproduced(
    go_oracle: GoOracle, tmp_path: Path, level: int
) -> None:
    tar = _layer(level + 10)
    blob = go_oracle.gzip(tar, level)
    recipe = _detect(tmp_path, blob, tar)
    assert recipe.kind == "gzip-go"
    assert recipe.params["header"] == blob[:10].hex() == go_header(level).hex()
    # A level that writes the same bytes on this tar may come first (as 4 and 5 can): the
    # recipe is whichever reproduces, so check bytes, and the level where XFL fixes it.
    if level in (1, 9, 6):
        assert recipe.params["level"] == level
    assert _rebuild(Recipe.from_json(recipe.to_json()), tar) == blob


def test_zlib_made_blob_is_still_zlib(tmp_path: Path) -> None:
    tar = _layer(3)
    recipe = _detect(tmp_path, compress(tar, "gzip6"), tar)
    assert recipe.kind == "gzip-zlib" and recipe.params["level"] == 6


def test_go_header_with_a_name_and_mtime_is_kept_verbatim(
    go_oracle: GoOracle, tmp_path: Path
) -> None:
    """Go's gzip.Writer writes Header.Name/ModTime when the program sets them; the recipe
    keeps whatever header the blob has (here spliced onto Go's deflate stream)."""
    tar = _layer(4)
    go = go_oracle.gzip(tar, 6)
    header = bytes([0x1F, 0x8B, 8, 8, 1, 2, 3, 4, 0, 255]) + b"layer.tar\0"
    recipe = _detect(tmp_path, header + go[10:], tar)
    assert recipe.kind == "gzip-go" and recipe.params["header"] == header.hex()


def test_recipe_refused_without_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    reason = "Krill's C extension krill._goflate is not built here"
    monkeypatch.setattr(recipes, "missing_reason", lambda: reason)
    with pytest.raises(RecipeError, match="not built here"):
        Recipe.from_json(go_gzip_recipe(6).to_json())


def test_detection_says_go_was_not_tried_without_the_extension(
    go_oracle: GoOracle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in (recipes, detect):
        monkeypatch.setattr(module, "missing_reason", lambda: "krill._goflate is not built here")
    tar = _layer(5)
    with pytest.raises(RecipeError, match="Go-made gzip was not tried"):
        _detect(tmp_path, go_oracle.gzip(tar, 6), tar)


@pytest.mark.parametrize(
    "params",
    [
        {"level": 10, "header": go_header(6).hex()},
        {"level": -1, "header": go_header(6).hex()},
        {"level": 6, "header": "00ff"},
        {"level": "x", "header": go_header(6).hex()},
        {"header": go_header(6).hex()},
    ],
)
def test_bad_recipe_params_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(RecipeError, match="bad gzip-go recipe"):
        Recipe.from_json({"kind": "gzip-go", **params})


def test_default_compression_is_recorded_as_level_6() -> None:
    assert go_gzip_recipe(-1).params["level"] == 6
    assert go_gzip_recipe(9).params["header"] == go_header(9).hex()


@pytest.mark.slow
@pytest.mark.parametrize("level", [6, 1])
def test_cli_rebuilds_a_go_made_layer(go_oracle: GoOracle, tmp_path: Path, level: int) -> None:
    """Both layers gzipped by Go: `krill delta create` then `apply` give Go's exact blob."""
    rng = random.Random(level)
    files = realistic_files(11, 80)
    changed = {
        n: mutated_bytes(rng, d, 2) if i % 5 == 0 else d for i, (n, d) in enumerate(files.items())
    }
    base, target = tmp_path / "base.tgz", tmp_path / "target.tgz"
    base.write_bytes(go_oracle.gzip(make_tar(files), level))
    target.write_bytes(go_oracle.gzip(make_tar(changed), level))

    def krill(*args: str | Path) -> subprocess.CompletedProcess[str]:
        command = krill_command(*map(str, args))
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    created = krill("delta", "create", base, target, tmp_path / "d.krd")
    assert created.returncode == 0, created.stderr
    assert "gzip-go" in created.stdout
    applied = krill("delta", "apply", base, tmp_path / "d.krd", tmp_path / "out.tgz")
    assert applied.returncode == 0, applied.stderr
    assert (tmp_path / "out.tgz").read_bytes() == target.read_bytes()


class _CountingCompressor(Compressor):
    """A wrong candidate for the blob (zlib level 1 against a level-6 blob); counts its input."""

    def __init__(self) -> None:
        self.fed = 0
        self._inner = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS, 8, 0)

    def feed(self, data: bytes) -> bytes:
        self.fed += len(data)
        return self._inner.compress(data)

    def finish(self) -> bytes:
        return self._inner.flush()


def test_a_wrong_candidate_is_refused_before_a_whole_chunk_is_fed(tmp_path: Path) -> None:
    """Detection feeds doubling reads, so a wrong setting stops at its first block: less
    than one 1 MiB read's worth of tar, where a 64 KiB probe and then 1 MiB reads cost
    every wrong candidate over 1 MiB (74 of them to refuse a GNU gzip layer)."""
    tar = _layer(5, count=200)
    assert len(tar) > 2 * CHUNK
    (tmp_path / "t.tar").write_bytes(tar)
    (tmp_path / "b.gz").write_bytes(compress(tar, "gzip6"))
    wrong = _CountingCompressor()
    assert not detect._reproduces(tmp_path / "b.gz", tmp_path / "t.tar", wrong)
    assert 0 < wrong.fed < CHUNK
