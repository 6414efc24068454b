"""A compressed base decompressed while the delta is applied (krill/delta/growingtar.py).

Reads of the growing tar must wait for their bytes, not see a short file; a
base that is not the delta's is still reported as such (not as whatever the
rebuild tripped on first); a corrupt base fails cleanly; no temp file stays.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest

from krill.delta import apply_delta, create_delta
from krill.delta.format import DeltaFormatError
from krill.delta.growingtar import GrowingTar
from krill.delta.recipes import RecipeError
from krill.digests import sha256_file
from tests.test_gogzip import python_tar


def _gz(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
    return path


@pytest.fixture(scope="module")
def tars() -> tuple[bytes, bytes]:
    base = python_tar(3 << 20)
    cut = len(base) // 2 // 512 * 512
    return base, base[:cut] + python_tar(1 << 20)[512 * 4 :]


def test_reads_wait_for_their_bytes(tmp_path: Path) -> None:
    data = os.urandom(1 << 20) * 24  # 24 MiB: still growing when the first reads come
    grown = GrowingTar(_gz(tmp_path / "b.gz", data), tmp_path)
    try:
        with grown.open() as reader:
            reader.seek(len(data) - 4096)
            assert reader.read(4096) == data[-4096:]
            reader.seek(100)
            assert reader.read(10) == data[100:110] and reader.tell() == 110
            assert reader.read() == data[110:]
        assert grown.result().size == len(data)
    finally:
        grown.discard()
    assert not list(tmp_path.glob(".krill-tar-*"))


def test_apply_from_a_gzip_base_and_leave_nothing(
    tmp_path: Path, tars: tuple[bytes, bytes]
) -> None:
    base, target = _gz(tmp_path / "base.tgz", tars[0]), _gz(tmp_path / "target.tgz", tars[1])
    create_delta(base, target, tmp_path / "d.krd")
    out = tmp_path / "out" / "layer"
    out.parent.mkdir()
    result = apply_delta(base, tmp_path / "d.krd", out)
    assert out.read_bytes() == target.read_bytes() and result.size == target.stat().st_size
    assert [p.name for p in out.parent.iterdir()] == ["layer"]


def test_a_wrong_gzip_base_is_reported_as_the_wrong_base(
    tmp_path: Path, tars: tuple[bytes, bytes]
) -> None:
    base, target = _gz(tmp_path / "base.tgz", tars[0]), _gz(tmp_path / "target.tgz", tars[1])
    create_delta(base, target, tmp_path / "d.krd")
    other = bytearray(tars[0])
    other[len(other) // 3] ^= 0xFF  # same size, other bytes: the rebuild may not notice first
    wrong = _gz(tmp_path / "wrong.tgz", bytes(other))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(DeltaFormatError, match="base layer does not match"):
        apply_delta(wrong, tmp_path / "d.krd", out_dir / "layer")
    assert not list(out_dir.iterdir())


def test_a_corrupt_gzip_base_fails_cleanly(tmp_path: Path, tars: tuple[bytes, bytes]) -> None:
    base, target = _gz(tmp_path / "base.tgz", tars[0]), _gz(tmp_path / "target.tgz", tars[1])
    create_delta(base, target, tmp_path / "d.krd")
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(base.read_bytes()[: base.stat().st_size // 2])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises((RecipeError, DeltaFormatError)):
        apply_delta(broken, tmp_path / "d.krd", out_dir / "layer")
    assert not list(out_dir.iterdir())


def test_the_tar_is_hashed_only_when_the_blob_is_not_the_claimed_one(tmp_path: Path) -> None:
    """A blob that is the claimed one lends its claimed diff_id (its tar is not hashed); any
    other blob's tar is hashed from disk, so another gzip of the same tar is still that tar,
    and a claim about another blob changes nothing."""
    data = python_tar(2 << 20)
    blob = _gz(tmp_path / "b.tgz", data)
    digest, diff_id = str(sha256_file(str(blob))), "sha256:" + hashlib.sha256(data).hexdigest()
    for claimed, expected in [
        ((digest, "sha256:" + "0" * 64), "sha256:" + "0" * 64),  # trusted: the blob is claimed
        (("sha256:" + "1" * 64, "sha256:" + "0" * 64), diff_id),  # another blob: hashed
        (None, diff_id),
    ]:
        grown = GrowingTar(blob, tmp_path, claimed)
        try:
            assert grown.result().diff_id == expected
        finally:
            grown.discard()


def test_another_gzip_of_the_base_tar_still_applies(
    tmp_path: Path, tars: tuple[bytes, bytes]
) -> None:
    base, target = _gz(tmp_path / "base.tgz", tars[0]), _gz(tmp_path / "target.tgz", tars[1])
    create_delta(base, target, tmp_path / "d.krd")
    other = tmp_path / "other.tgz"
    other.write_bytes(gzip.compress(tars[0], compresslevel=1, mtime=0))
    apply_delta(other, tmp_path / "d.krd", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == target.read_bytes()
