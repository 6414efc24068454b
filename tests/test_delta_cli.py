"""``krill delta create|apply`` as a user runs them (a real process)."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from krill.delta import cli, encode
from krill.delta.format import DeltaFormatError
from tests.components import krill_command
from tests.imagebuild import make_tar, realistic_files
from tests.test_delta_support import Entry, build_tar, compress, mutated_bytes


def _krill(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        krill_command(*map(str, args)), capture_output=True, text=True, timeout=120
    )


def _layers(tmp: Path) -> tuple[Path, bytes]:
    """A gzip base layer on disk, and the tar of a target with every file changed a little."""
    rng = random.Random(2)
    files = {f"app/m{i}.py": Entry("file", rng.randbytes(6000)) for i in range(5)}
    changed = {n: Entry("file", mutated_bytes(rng, e.data, 3)) for n, e in files.items()}
    base = tmp / "base.tgz"
    base.write_bytes(compress(build_tar(files), "gzip6"))
    return base, build_tar(changed)


def _layer(path: Path, tar: bytes, recipe: str) -> Path:
    path.write_bytes(compress(tar, recipe))
    return path


def test_create_then_apply_rebuilds_target(tmp_path: Path) -> None:
    base, target_tar = _layers(tmp_path)
    target = _layer(tmp_path / "target.tar.zst", target_tar, "zstd3")
    created = _krill("delta", "create", base, target, tmp_path / "d.krd")
    assert created.returncode == 0, created.stderr
    assert "recipe zstd" in created.stdout
    applied = _krill("delta", "apply", base, tmp_path / "d.krd", tmp_path / "out.zst")
    assert applied.returncode == 0, applied.stderr
    assert (tmp_path / "out.zst").read_bytes() == target.read_bytes()


def test_create_refuses_gnu_gzip_target(tmp_path: Path) -> None:
    """GNU gzip's deflate is not zlib's on real layers; no zlib setting matches it.

    (On small inputs GNU gzip -6 can equal zlib level 6 with memLevel 9, and then
    the layer *is* reproducible: detection verifies bytes, it never guesses.)
    """
    base, _ = _layers(tmp_path)
    (tmp_path / "target.tar").write_bytes(make_tar(realistic_files(3)))
    subprocess.run(["gzip", "-6", "-n", str(tmp_path / "target.tar")], check=True)
    result = _krill("delta", "create", base, tmp_path / "target.tar.gz", tmp_path / "d.krd")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reproduce the target's gzip compression" in lines[0]
    assert not (tmp_path / "d.krd").exists()


def test_apply_with_wrong_base_writes_nothing(tmp_path: Path) -> None:
    base, target_tar = _layers(tmp_path)
    target = _layer(tmp_path / "target.tgz", target_tar, "gzip6")
    assert _krill("delta", "create", base, target, tmp_path / "d.krd").returncode == 0
    other = tmp_path / "other.tar"
    other.write_bytes(build_tar({"x": Entry("file", b"x")}))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _krill("delta", "apply", other, tmp_path / "d.krd", out_dir / "layer")
    assert result.returncode != 0
    assert "base layer does not match" in result.stderr
    assert list(out_dir.iterdir()) == []


def test_engine_flag_picks_the_binary_diff(tmp_path: Path) -> None:
    """``--engine bsdiff`` (the size setting) still round-trips; an unknown engine is refused."""
    base, target_tar = _layers(tmp_path)
    target = _layer(tmp_path / "target.tgz", target_tar, "gzip6")
    created = _krill("delta", "create", "--engine", "bsdiff", base, target, tmp_path / "d.krd")
    assert created.returncode == 0, created.stderr
    applied = _krill("delta", "apply", base, tmp_path / "d.krd", tmp_path / "out.tgz")
    assert applied.returncode == 0, applied.stderr
    assert (tmp_path / "out.tgz").read_bytes() == target.read_bytes()
    refused = _krill("delta", "create", "--engine", "xdelta", base, target, tmp_path / "e.krd")
    assert refused.returncode != 0
    assert "--engine" in refused.stderr
    assert not (tmp_path / "e.krd").exists()


def test_binary_diff_limit_above_what_appliers_accept_is_refused(tmp_path: Path) -> None:
    """A delta with ops appliers refuse would be thrown away after all the encoding."""
    base, target_tar = _layers(tmp_path)
    target = _layer(tmp_path / "target.tar", target_tar, "identity")
    too_big = str(1 << 30)
    result = _krill("delta", "create", "--bsdiff-max", too_big, base, target, tmp_path / "d.krd")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--bsdiff-max" in lines[0] and "appliers accept" in lines[0]
    assert not (tmp_path / "d.krd").exists()


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_an_out_that_would_destroy_an_input_or_cannot_be_a_file_is_refused(
    tmp_path: Path,
) -> None:
    """A review found `create BASE TARGET TARGET` replaced the target with its delta."""
    base, target_tar = _layers(tmp_path)
    target = _layer(tmp_path / "target.tgz", target_tar, "gzip6")
    kept = {p: p.read_bytes() for p in (base, target)}
    for args in (("create", base, target, target), ("create", base, target, base)):
        assert "writing it would destroy the input" in _one_line(_krill("delta", *args))
    assert _krill("delta", "create", base, target, tmp_path / "d.krd").returncode == 0
    refusals = {
        ("apply", base, tmp_path / "d.krd", base): "writing it would destroy the input",
        ("apply", base, tmp_path / "d.krd", tmp_path): "is a directory",
        ("apply", base, tmp_path / "d.krd", tmp_path / "no" / "out"): "does not exist",
        ("apply", base, tmp_path / "d.krd", tmp_path / "o", "--workers", "0"): "--workers",
        ("create", base, target, tmp_path / "e.krd", "--level", "99"): "--level must be",
    }
    for args, expected in refusals.items():
        assert expected in _one_line(_krill("delta", *args)), args
    assert {p: p.read_bytes() for p in (base, target)} == kept


def test_a_failed_create_keeps_an_existing_out_and_drops_a_delta_that_fails_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """create_delta renames OUT into place only when complete: an error before that must
    leave yesterday's OUT alone; a published delta that does not verify is removed."""
    base, target_tar = _layers(tmp_path)
    target = _layer(tmp_path / "target.tgz", target_tar, "gzip6")
    out = tmp_path / "d.krd"
    out.write_bytes(b"yesterday's delta")

    def unreadable(*args: object) -> object:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(encode, "create_delta", unreadable)
    assert cli.main(["delta", "create", str(base), str(target), str(out)]) == 1
    assert out.read_bytes() == b"yesterday's delta"

    def unverifiable(base_blob: Path, delta: Path) -> None:
        raise DeltaFormatError("trailer checksum mismatch")

    monkeypatch.undo()
    monkeypatch.setattr(cli, "_verify", unverifiable)
    assert cli.main(["delta", "create", str(base), str(target), str(out)]) == 1
    assert not out.exists()
    assert "delta failed: trailer checksum mismatch" in capsys.readouterr().err


def test_a_plain_base_of_the_wrong_size_is_named_by_its_size(tmp_path: Path) -> None:
    base, target_tar = _layers(tmp_path)
    target = _layer(tmp_path / "target.tgz", target_tar, "gzip6")
    assert _krill("delta", "create", base, target, tmp_path / "d.krd").returncode == 0
    (tmp_path / "wrong.tar").write_bytes(b"x" * 5000)
    line = _one_line(_krill("delta", "apply", tmp_path / "wrong.tar", tmp_path / "d.krd",
                            tmp_path / "out"))  # fmt: skip
    assert "its tar is 5000 bytes, the delta was made from sha256:" in line
