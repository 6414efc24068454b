"""The meta prefix cut by the clock (krill/delta/metaprefix.py).

The candidate cuts must be the base's meta bytes before each offset (what the
applier's lazy scan reads back), the choice must weigh delta bytes against the
node's wait (a layer of small files keeps its prefix, a large base whose meta
saves little does not), and a delta with a cut prefix must still rebuild
bit-exactly, its first op waiting only for the base up to the cut.
"""

from __future__ import annotations

import gzip
import io
import random
from pathlib import Path

import pytest

from krill.delta import apply_delta, create_delta, metaprefix, read_delta_header
from krill.delta.metaprefix import MetaCut, choose_meta_cut, meta_cuts
from krill.delta.tarscan import meta_ranges, read_meta_prefix, scan, scan_meta_prefix
from tests.test_delta_support import Entry, build_tar


def _tar(seed: int, small: int, big: int, changed: float = 0.0) -> bytes:
    """Small text files (meta) and big random ones (bulk), ``changed`` of the small edited."""
    rng = random.Random(seed)
    text = random.Random(1)
    files: dict[str, Entry] = {}
    for i in range(small):
        body = f"# module {i}\n".encode() + bytes(text.choice(b"abcdef =\n") for _ in range(900))
        if rng.random() < changed:
            body = body.replace(b"a", b"b", 5)
        files[f"pkg/m{i:04d}.py"] = Entry("file", body)
    for i in range(big):
        files[f"pkg/lib{i}.so"] = Entry("file", random.Random(100 + i).randbytes(300_000))
    return build_tar(files)


def test_cuts_are_the_meta_bytes_before_each_offset() -> None:
    tar = _tar(1, 300, 4)
    layout = scan(io.BytesIO(tar), len(tar))
    ranges = list(meta_ranges(layout, 4096))
    whole = read_meta_prefix(io.BytesIO(tar), layout, 4096, 1 << 30)
    cuts = meta_cuts(ranges, len(tar), len(whole))
    assert cuts[0] == MetaCut(0, 0) and cuts[-1].prefix_len == len(whole)
    assert [c.prefix_len for c in cuts] == sorted({c.prefix_len for c in cuts})
    for cut in cuts:
        before = sum(max(0, min(o + n, cut.tar_offset) - o) for o, n in ranges)
        assert before == cut.prefix_len  # nothing of the prefix lies past the offset
        lazy = scan_meta_prefix(io.BytesIO(tar), len(tar), 4096, cut.prefix_len)
        assert lazy == whole[: cut.prefix_len]


def test_a_capped_cut_never_passes_the_prefix_cap() -> None:
    tar = _tar(1, 300, 0)
    layout = scan(io.BytesIO(tar), len(tar))
    cuts = meta_cuts(meta_ranges(layout, 4096), len(tar), 10_000)
    assert max(c.prefix_len for c in cuts) == 10_000


def _choose(base: bytes, target: bytes) -> tuple[MetaCut, list[MetaCut]]:
    base_layout = scan(io.BytesIO(base), len(base))
    target_layout = scan(io.BytesIO(target), len(target))
    prefix = read_meta_prefix(io.BytesIO(base), base_layout, 4096, 1 << 30)
    cuts = meta_cuts(meta_ranges(base_layout, 4096), len(base), len(prefix))
    target_meta = read_meta_prefix(io.BytesIO(target), target_layout, 4096, 1 << 30)
    return choose_meta_cut(prefix, cuts, target_meta, 24, len(target_meta)), cuts


def test_small_files_keep_their_prefix() -> None:
    """Mostly meta, a small base: the prefix is what the delta saves, the wait is nothing."""
    chosen, cuts = _choose(_tar(1, 600, 0), _tar(2, 600, 0, changed=0.1))
    assert chosen == cuts[-1] and chosen.prefix_len > 0


def test_a_slow_base_drops_a_prefix_that_saves_little(monkeypatch: pytest.MonkeyPatch) -> None:
    """A base that takes long to decompress (a big one, scaled down here by a slow rate)
    and little meta: waiting for its prefix costs more than the bytes it saves."""
    monkeypatch.setattr(metaprefix, "INFLATE_BYTES_PER_S", 1e5)
    chosen, cuts = _choose(_tar(1, 40, 8), _tar(2, 40, 8, changed=0.5))
    assert chosen.prefix_len < cuts[-1].prefix_len


def _gz(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
    return path


def test_a_cut_prefix_rebuilds_bit_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metaprefix, "INFLATE_BYTES_PER_S", 1e5)
    base = _gz(tmp_path / "base.tgz", _tar(1, 40, 8))
    target = _gz(tmp_path / "target.tgz", _tar(2, 40, 8, changed=0.5))
    create_delta(base, target, tmp_path / "d.krd")
    header = read_delta_header(tmp_path / "d.krd")
    whole = read_meta_prefix(
        io.BytesIO(gzip.decompress(base.read_bytes())),
        scan(io.BytesIO(gzip.decompress(base.read_bytes())), header.base.tar_size),
        4096,
        1 << 30,
    )
    assert header.meta.prefix_len < len(whole)
    out = tmp_path / "out"
    apply_delta(base, tmp_path / "d.krd", out)
    assert out.read_bytes() == target.read_bytes()
