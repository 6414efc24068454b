"""Round trips of the delta codec on generated tars, for every recipe: bytes identical."""

from __future__ import annotations

import random
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill.delta.encode import EncodeOptions
from tests.test_delta_support import Entry, build_tar, compress, mutated_bytes, round_trip

RECIPES = ["identity", "gzip6", "gzip1", "gzip9", "zstd3", "zstd19"]
SMALL_PIECES = EncodeOptions(piece_bytes=16 * 1024, workers=2)

_counter = iter(range(1_000_000))


def _long_name(rng: random.Random) -> str:
    return "/".join(f"dir{rng.randrange(10)}-" + "x" * rng.randint(20, 60) for _ in range(3))


def _tree(rng: random.Random, count: int) -> dict[str, Entry]:
    entries: dict[str, Entry] = {"etc": Entry("dir", mode=0o755)}
    for i in range(count):
        name = _long_name(rng) + f"/f{i}" if rng.random() < 0.2 else f"usr/lib/f{i}.bin"
        size = rng.choice([0, 10, 700, 5000, 20_000, 70_000])
        # Half text-like (compressible), half random.
        data = (
            (b"line %d of config\n" % i) * (size // 18)
            if rng.random() < 0.5
            else rng.randbytes(size)
        )
        xattrs = {"user.note": f"n{i}"} if rng.random() < 0.2 else {}
        entries[name] = Entry("file", data, mode=rng.choice([0o644, 0o755]), xattrs=xattrs)
    files = [n for n, e in entries.items() if e.kind == "file"]
    if files:
        entries["zz/hardlink"] = Entry("hardlink", target=rng.choice(files))
        entries["etc/symlink"] = Entry("symlink", target=rng.choice(files))
    return entries


def _mutate(rng: random.Random, base: dict[str, Entry], changes: int) -> dict[str, Entry]:
    """Files added, removed, renamed, changed; modes and xattrs changed."""
    target = {n: Entry(e.kind, e.data, e.mode, e.target, dict(e.xattrs)) for n, e in base.items()}
    files = sorted(n for n, e in target.items() if e.kind == "file")
    for _ in range(changes):
        action = rng.randrange(6)
        if action == 0 or not files:
            target[f"new/added{rng.randrange(1000)}"] = Entry(
                "file", rng.randbytes(rng.choice([50, 9000]))
            )
            continue
        name = rng.choice(files)
        if name not in target:
            continue
        entry = target[name]
        if action == 1:
            del target[name]
        elif action == 2:
            target[f"renamed/{name.rsplit('/', 1)[-1]}"] = target.pop(name)
        elif action == 3 and entry.data:
            entry.data = mutated_bytes(rng, entry.data, rng.randint(1, 5))
        elif action == 4:
            entry.mode ^= 0o111
        else:
            entry.xattrs["user.changed"] = "yes"
    return target


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32),
    count=st.integers(0, 12),
    changes=st.integers(0, 6),
    recipe=st.sampled_from(RECIPES),
    tar_format=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]),
)
def test_round_trip_rebuilds_identical_bytes(
    tmp_path: Path, seed: int, count: int, changes: int, recipe: str, tar_format: int
) -> None:
    rng = random.Random(seed)
    base_tree = _tree(rng, count)
    target_tree = _mutate(rng, base_tree, changes)
    base = compress(build_tar(base_tree, tar_format), recipe)
    target = compress(build_tar(target_tree, tar_format), recipe)
    _, rebuilt = round_trip(tmp_path / f"case{next(_counter)}", base, target, SMALL_PIECES)
    assert rebuilt == target


@pytest.mark.parametrize("recipe", RECIPES)
def test_empty_layers_round_trip(tmp_path: Path, recipe: str) -> None:
    empty = compress(build_tar({}), recipe)
    full = compress(build_tar({"a": Entry("file", b"x" * 10_000)}), recipe)
    for name, (base, target) in {
        "both": (empty, empty),
        "from": (empty, full),
        "to": (full, empty),
    }.items():
        _, rebuilt = round_trip(tmp_path / name, base, target)
        assert rebuilt == target


def test_unchanged_files_are_copied_and_changed_binaries_coded_small(tmp_path: Path) -> None:
    rng = random.Random(7)
    base_tree = {f"lib/big{i}.so": Entry("file", rng.randbytes(200_000)) for i in range(4)}
    target_tree = {n: Entry("file", e.data) for n, e in base_tree.items()}
    target_tree["lib/big0.so"].data = mutated_bytes(rng, base_tree["lib/big0.so"].data, 20)
    target_tree["moved/big1.so"] = target_tree.pop("lib/big1.so")
    base, target = (
        compress(build_tar(base_tree), "gzip6"),
        compress(build_tar(target_tree), "gzip6"),
    )
    result, rebuilt = round_trip(tmp_path, base, target)
    assert rebuilt == target
    assert result.stats["copy_files"] == 3
    assert result.size < len(target) // 50


def _relinked(rng: random.Random, size: int, stride: int = 40) -> tuple[bytes, bytes]:
    """A binary and its relinked twin: an address bumped every ``stride`` bytes."""
    old = bytearray(rng.randbytes(size))
    old[100:110] = bytes(10)  # a NUL early on: the encoder's "binary" test
    new = bytearray(old)
    for pos in range(0, len(new) - 4, stride):
        value = (int.from_bytes(new[pos : pos + 4], "little") + 4096) % 2**32
        new[pos : pos + 4] = value.to_bytes(4, "little")
    return bytes(old), bytes(new)


@pytest.mark.parametrize("engine", ["hdiff", "bsdiff"])
def test_scattered_binary_changes_use_a_binary_diff(tmp_path: Path, engine: str) -> None:
    """Many small in-place edits (what a relinked binary looks like): the diff engine wins."""
    old, new = _relinked(random.Random(3), 300_000)
    base = build_tar({"bin/app": Entry("file", old)})
    target = build_tar({"bin/app": Entry("file", new)})
    result, rebuilt = round_trip(tmp_path, base, target, EncodeOptions(diff_engine=engine))
    assert rebuilt == target
    assert result.stats.get(engine) == 1
    assert result.size < len(new) // 20


@pytest.mark.parametrize("partner_size", [300_000, 280_000, 330_000])
def test_large_binaries_are_diffed_in_segments(tmp_path: Path, partner_size: int) -> None:
    """Segment boundaries (and proportional partner windows when sizes differ) are exact."""
    rng = random.Random(partner_size)
    old, new = _relinked(rng, 300_000, stride=12)
    old = old[:partner_size] + rng.randbytes(max(0, partner_size - len(old)))
    base = build_tar({"lib/libx.so": Entry("file", old), "lib/other": Entry("file", b"o" * 9000)})
    target = build_tar({"lib/libx.so": Entry("file", new), "lib/other": Entry("file", b"p" * 9000)})
    # zstd's higher levels off, so the segments' hdiff ops are what gets checked.
    options = EncodeOptions(
        diff_segment_bytes=64 * 1024, workers=3, top_level_max_bytes=0, probe_level=3
    )
    result, rebuilt = round_trip(tmp_path, base, target, options)
    assert rebuilt == target
    assert result.stats["diff_segments"] == 3
    assert result.stats.get("hdiff", 0) == 3, result.stats


def test_text_files_are_not_split(tmp_path: Path) -> None:
    rng = random.Random(9)
    words = [rng.randbytes(4).hex().encode() for _ in range(500)]
    old = b" ".join(rng.choice(words) for _ in range(40_000))
    new = old[:50_000] + b"inserted line\n" + old[50_000:]
    base = build_tar({"data.txt": Entry("file", old)})
    target = build_tar({"data.txt": Entry("file", new)})
    options = EncodeOptions(diff_segment_bytes=64 * 1024, workers=3)
    result, rebuilt = round_trip(tmp_path, base, target, options)
    assert rebuilt == target
    assert "diff_segments" not in result.stats


def test_large_files_are_coded_in_pieces(tmp_path: Path) -> None:
    rng = random.Random(5)
    data = rng.randbytes(100_000)
    base = build_tar({"big": Entry("file", data)})
    target = build_tar({"big": Entry("file", mutated_bytes(rng, data, 10))})
    result, rebuilt = round_trip(tmp_path, base, target, EncodeOptions(piece_bytes=8192))
    assert rebuilt == target
    coded = ("zstd_prefix", "bsdiff", "hdiff")
    assert sum(result.stats.get(kind, 0) for kind in coded) >= 12


def _gnu_tar(src: Path, out: Path, *flags: str) -> bytes:
    subprocess.run(
        [
            "tar",
            "--sparse",
            "--owner=0",
            "--group=0",
            "--mtime=@1700000000",
            *flags,
            "-C",
            str(src),
            "-cf",
            str(out),
            ".",
        ],
        check=True,
    )
    return out.read_bytes()


def _sparse_tree(root: Path, seed: int) -> None:
    """A sparse file with many holes (GNU sparse maps need extension headers) and a long name."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    with open(root / "disk.img", "wb") as f:
        f.truncate(4 << 20)
        for i in range(12):
            f.seek(i * 300_000 + 4096)
            f.write(rng.randbytes(5000) if i % 3 else b"constant block" * 300)
    long_dir = root / ("d" * 90) / ("e" * 90)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 120)).write_bytes(rng.randbytes(6000))
    (root / "hard").hardlink_to(long_dir / ("f" * 120))


@pytest.mark.parametrize(
    "flags", [("--format=gnu",), ("--format=posix",), ("--format=posix", "--sparse-version=1.0")]
)
@pytest.mark.parametrize("recipe", ["identity", "gzip6", "zstd3"])
def test_gnu_tar_sparse_and_long_names(tmp_path: Path, flags: tuple[str, ...], recipe: str) -> None:
    _sparse_tree(tmp_path / "v1", 1)
    _sparse_tree(tmp_path / "v2", 2)
    base = compress(_gnu_tar(tmp_path / "v1", tmp_path / "v1.tar", *flags), recipe)
    target = compress(_gnu_tar(tmp_path / "v2", tmp_path / "v2.tar", *flags), recipe)
    _, rebuilt = round_trip(tmp_path / "rt", base, target)
    assert rebuilt == target


def test_files_over_the_streaming_threshold(tmp_path: Path) -> None:
    """Big files are decoded straight into the output (prefix and literal ops alike)."""
    rng = random.Random(9)
    data = rng.randbytes(5 << 20)
    base = build_tar({"big": Entry("file", data)})
    target = build_tar(
        {
            "big": Entry("file", mutated_bytes(rng, data, 5)),
            "new": Entry("file", rng.randbytes(5 << 20)),
        }
    )
    options = EncodeOptions(content_level=3, bsdiff_max_bytes=0)
    result, rebuilt = round_trip(
        tmp_path, compress(base, "zstd3"), compress(target, "zstd3"), options
    )
    assert rebuilt == compress(target, "zstd3")
    assert result.stats["zstd_prefix"] == 1 and result.stats["zstd_literal"] == 1
