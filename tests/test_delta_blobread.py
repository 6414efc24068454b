"""The base's inflate: ISA-L where installed, the standard library's otherwise, same tar."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from krill.delta import blobread
from krill.delta.compressors import RecipeError


def _gzip_blob(tmp_path: Path) -> tuple[Path, bytes]:
    tar = os.urandom(300_000) + bytes(2_000_000) + b"krill" * 100_000
    blob = tmp_path / "layer.gz"
    blob.write_bytes(gzip.compress(tar, compresslevel=6))
    return blob, tar


@pytest.fixture(params=["installed", "standard-library"])
def inflater(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """ISA-L where installed, and the standard library's gzip as on a node without ``isal``."""
    if request.param == "standard-library":
        monkeypatch.setattr(blobread, "_fast_gzip", None)
    return str(request.param)


def test_either_inflater_gives_the_same_tar(tmp_path: Path, inflater: str) -> None:
    """A node without ``isal`` rebuilds the same bytes, only slower."""
    blob, tar = _gzip_blob(tmp_path)
    assert b"".join(blobread.iter_tar_chunks(blob)) == tar


def test_a_corrupt_gzip_base_is_a_recipe_error(tmp_path: Path, inflater: str) -> None:
    blob, _ = _gzip_blob(tmp_path)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    blob.write_bytes(bytes(data[: len(data) - 100]))
    with pytest.raises(RecipeError):
        b"".join(blobread.iter_tar_chunks(blob))
