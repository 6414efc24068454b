"""Crafted, truncated and mismatched deltas fail cleanly, bounded, and write nothing."""

from __future__ import annotations

import hashlib
import json
import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill.delta import DeltaFormatError, RecipeError, apply_delta, create_delta
from krill.delta import format as fmt
from tests.test_delta_support import Entry, build_tar, compress, mutated_bytes

_counter = iter(range(1_000_000))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    """A base blob, a valid delta to a changed target, and the target's bytes."""
    root = tmp_path_factory.mktemp("pair")
    rng = random.Random(11)
    files = {f"lib/f{i}": Entry("file", rng.randbytes(9000)) for i in range(4)}
    files["etc/conf"] = Entry("file", b"small")
    target_files = {n: Entry("file", e.data) for n, e in files.items()}
    target_files["lib/f0"].data = mutated_bytes(rng, files["lib/f0"].data, 4)
    target_files["lib/new"] = Entry("file", rng.randbytes(7000))
    base, target = root / "base.tgz", root / "target.tgz"
    base.write_bytes(compress(build_tar(files), "gzip6"))
    target_bytes = compress(build_tar(target_files), "gzip6")
    target.write_bytes(target_bytes)
    delta = root / "d.krd"
    create_delta(base, target, delta)
    return base, delta, target_bytes


def _resign(data: bytes) -> bytes:
    """Replace the trailer so only the codec's own checks can catch a crafted change."""
    body = data[:-32]
    return body + hashlib.sha256(body).digest()


def _split(data: bytes) -> tuple[dict, bytes]:
    _, _, length = struct.unpack(">8sHI", data[:14])
    return json.loads(data[14 : 14 + length]), data[14 + length : -32]


def _join(header: dict, ops: bytes, version: int = fmt.VERSION) -> bytes:
    body = json.dumps(header).encode()
    return _resign(struct.pack(">8sHI", fmt.MAGIC, version, len(body)) + body + ops + bytes(32))


def _apply_fails(tmp: Path, base: Path, delta_bytes: bytes, error: type = DeltaFormatError) -> str:
    tmp.mkdir(parents=True, exist_ok=True)
    delta = tmp / "crafted.krd"
    delta.write_bytes(delta_bytes)
    out_dir = tmp / "out"
    out_dir.mkdir()
    with pytest.raises(error) as info:
        apply_delta(base, delta, out_dir / "layer")
    assert list(out_dir.iterdir()) == [], "nothing may be left behind"
    return str(info.value)


def test_valid_delta_applies(tmp_path: Path, pair: tuple[Path, Path, bytes]) -> None:
    base, delta, target = pair
    assert apply_delta(base, delta, tmp_path / "out").path.read_bytes() == target


@pytest.mark.parametrize("cut", [0, 5, 13, 40, 200, -33, -32, -1])
def test_truncated_delta_fails_cleanly(
    tmp_path: Path, pair: tuple[Path, Path, bytes], cut: int
) -> None:
    base, delta, _ = pair
    data = delta.read_bytes()
    _apply_fails(tmp_path, base, data[:cut])


def test_truncated_delta_with_valid_trailer_fails(
    tmp_path: Path, pair: tuple[Path, Path, bytes]
) -> None:
    base, delta, _ = pair
    header, ops = _split(delta.read_bytes())
    for i, cut in enumerate([1, len(ops) // 2, len(ops) - 1]):
        _apply_fails(tmp_path / str(i), base, _join(header, ops[:cut]))


def test_header_claiming_huge_sizes_is_refused(
    tmp_path: Path, pair: tuple[Path, Path, bytes]
) -> None:
    base, delta, _ = pair
    header, ops = _split(delta.read_bytes())
    header["target"]["tar_size"] = 2**60
    assert "tar_size" in _apply_fails(tmp_path, base, _join(header, ops))


@pytest.mark.parametrize(
    "op",
    [
        bytes([fmt.OP_ZLIT]) + struct.pack(">II", 2**32 - 1, 10) + bytes(10),  # 4 GiB literal
        bytes([fmt.OP_COPY]) + struct.pack(">QQ", 0, 2**60),  # copy 2^60 bytes
        bytes([fmt.OP_COPY]) + struct.pack(">QQ", 2**62, 16),  # beyond the base
        bytes([fmt.OP_META]) + struct.pack(">II", 2**31, 4),  # 2 GiB meta piece
        bytes([fmt.OP_ZPREFIX]) + struct.pack(">QIII", 0, 2**31, 100, 4) + bytes(4),
        bytes([fmt.OP_BSDIFF]) + struct.pack(">QIIIII", 0, 64, 100, 2**31, 0, 0),
        bytes([fmt.OP_HDIFF]) + struct.pack(">QIIII", 0, 64, 100, 2**31, 4) + bytes(4),
        bytes([fmt.OP_HDIFF]) + struct.pack(">QIIII", 0, 2**31, 100, 100, 4) + bytes(4),
        bytes([77]),  # unknown op
    ],
)
def test_crafted_ops_are_refused_before_allocating(
    tmp_path: Path, pair: tuple[Path, Path, bytes], op: bytes
) -> None:
    base, delta, _ = pair
    header, _ = _split(delta.read_bytes())
    _apply_fails(tmp_path, base, _join(header, op + bytes([fmt.OP_END])))


def test_zstd_bomb_is_cut_at_the_declared_length(
    tmp_path: Path, pair: tuple[Path, Path, bytes]
) -> None:
    """A frame expanding far past its op's length stops at the length and is refused."""
    from krill.delta.zstdlib import zstd

    base, delta, _ = pair
    header, _ = _split(delta.read_bytes())
    bomb = zstd.compress(bytes(64 << 20))
    header["target"]["tar_size"] = 8 << 20  # room for the streamed case
    for i, out_len in enumerate([1000, 5 << 20]):  # decoded in a worker / streamed
        op = fmt.encode_zlit(out_len, bomb) + bytes([fmt.OP_END])
        _apply_fails(tmp_path / str(i), base, _join(header, op))


def test_corrupt_bsdiff_control_is_refused(tmp_path: Path, pair: tuple[Path, Path, bytes]) -> None:
    from krill.delta.zstdlib import zstd

    base, delta, _ = pair
    header, _ = _split(delta.read_bytes())
    control = struct.pack("<qqq", 2**40, 2**40, -(2**40))
    blocks = (zstd.compress(control), zstd.compress(b""), zstd.compress(b""))
    op = fmt.encode_bsdiff(0, 512, 100, blocks) + bytes([fmt.OP_END])
    _apply_fails(tmp_path, base, _join(header, op))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=4)
)
def test_random_corruption_never_escapes(
    tmp_path: Path, pair: tuple[Path, Path, bytes], flips: list[tuple[int, int]]
) -> None:
    """Flipped bytes (trailer re-signed) end in a clear error or the exact target, nothing else."""
    base, delta, target = pair
    data = bytearray(delta.read_bytes())
    for pos, xor in flips:
        data[pos % (len(data) - 32)] ^= xor
    tmp = tmp_path / f"c{next(_counter)}"
    tmp.mkdir()
    crafted = tmp / "crafted.krd"
    crafted.write_bytes(_resign(bytes(data)))
    out_dir = tmp / "out"
    out_dir.mkdir()
    try:
        result = apply_delta(base, crafted, out_dir / "layer")
    except (DeltaFormatError, RecipeError):
        assert list(out_dir.iterdir()) == []
    else:
        assert result.path.read_bytes() == target


def test_wrong_base_is_refused(tmp_path: Path, pair: tuple[Path, Path, bytes]) -> None:
    _, delta, _ = pair
    other = tmp_path / "other.tar"
    other.write_bytes(build_tar({"x": Entry("file", b"other")}))
    message = _apply_fails(tmp_path / "t", other, delta.read_bytes())
    assert "base layer does not match" in message


def test_zstd_recipe_from_another_libzstd_is_refused(
    tmp_path: Path, pair: tuple[Path, Path, bytes]
) -> None:
    base, delta, _ = pair
    header, ops = _split(delta.read_bytes())
    header["recipe"] = {
        "kind": "zstd",
        "level": 3,
        "checksum": False,
        "content_size": True,
        "libzstd": "0.0.1",
    }
    message = _apply_fails(tmp_path, base, _join(header, ops), RecipeError)
    assert "libzstd 0.0.1" in message


def test_output_is_only_written_at_out(tmp_path: Path, pair: tuple[Path, Path, bytes]) -> None:
    base, delta, target = pair
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    apply_delta(base, delta, out_dir / "layer.tgz")
    assert [p.name for p in out_dir.iterdir()] == ["layer.tgz"]
    assert (out_dir / "layer.tgz").read_bytes() == target


def _base_tar_head(base: Path, size: int) -> bytes:
    import gzip

    return gzip.decompress(base.read_bytes())[:size]


def _hdiff_op(old: bytes, new: bytes, raw: bytes, out_len: int | None = None) -> bytes:
    from krill.delta.zstdlib import zstd

    out_len = len(new) if out_len is None else out_len
    op = fmt.encode_hdiff(0, len(old), out_len, len(raw), zstd.compress(raw))
    return op + bytes([fmt.OP_END])


def _corrupt_covers(raw: bytes) -> bytes:
    from krill.delta import hdiff

    header = hdiff.parse_header(raw)
    data = bytearray(raw)
    for i in range(header.header_len, header.header_len + header.sections[0]):
        data[i] = 0xFF  # every cover points far past the old data
    return bytes(data)


@pytest.mark.parametrize("case", ["not_hdiff", "other_sizes", "compressed", "bad_covers"])
def test_crafted_hdiff_ops_are_refused(
    tmp_path: Path, pair: tuple[Path, Path, bytes], case: str
) -> None:
    """OP_HDIFF payloads are checked against the op before HDiffPatch sees them."""
    import hdiffpatch

    from krill.delta import hdiff

    base, delta, _ = pair
    header, _ = _split(delta.read_bytes())
    old = _base_tar_head(base, 4096)
    new = old[:1000] + b"changed!" + old[1008:3000]
    raw = hdiff.diff(old, new)
    op = {
        "not_hdiff": lambda: _hdiff_op(old, new, b"not a diff at all" * 10),
        "other_sizes": lambda: _hdiff_op(old, new, raw, out_len=len(new) + 1),
        "compressed": lambda: _hdiff_op(old, new, hdiffpatch.diff(old, new, "zstd")),
        "bad_covers": lambda: _hdiff_op(old, new, _corrupt_covers(raw)),
    }[case]()
    message = _apply_fails(tmp_path, base, _join(header, op))
    assert "hdiff" in message.lower(), message


def test_hdiff_op_rebuilds_exactly(tmp_path: Path, pair: tuple[Path, Path, bytes]) -> None:
    """The same op, uncorrupted, decodes to ``new``; only the layer digest then differs."""
    from krill.delta import hdiff
    from krill.delta.apply import _decode_content

    base, _, _ = pair
    old = _base_tar_head(base, 4096)
    new = old[:1000] + b"changed!" + old[1008:3000]
    raw = hdiff.diff(old, new)
    reader_op = fmt.Op(fmt.OP_HDIFF, len(new), 0, len(old), (_zstd(raw),), len(raw))
    assert _decode_content(reader_op, old) == new
    bad = fmt.Op(fmt.OP_HDIFF, len(new), 0, len(old), (_zstd(_corrupt_covers(raw)),), len(raw))
    with pytest.raises(DeltaFormatError):
        _decode_content(bad, old)


def _zstd(data: bytes) -> bytes:
    from krill.delta.zstdlib import zstd

    return zstd.compress(data)


def test_version_1_deltas_still_apply(tmp_path: Path) -> None:
    """Deltas written before OP_HDIFF existed (format 1) are read as before."""
    from krill.delta.encode import EncodeOptions

    rng = random.Random(21)
    files = {f"bin/b{i}": Entry("file", rng.randbytes(20_000)) for i in range(2)}
    target_files = {n: Entry("file", mutated_bytes(rng, e.data, 30)) for n, e in files.items()}
    base, target = tmp_path / "base.tgz", tmp_path / "target.tgz"
    base.write_bytes(compress(build_tar(files), "gzip6"))
    target.write_bytes(compress(build_tar(target_files), "gzip6"))
    delta = tmp_path / "v2.krd"
    create_delta(base, target, delta, EncodeOptions(diff_engine="bsdiff"))
    header, ops = _split(delta.read_bytes())
    header["format"] = "krill-delta/1"
    v1 = tmp_path / "v1.krd"
    v1.write_bytes(_join(header, ops, version=1))
    assert apply_delta(base, v1, tmp_path / "out").path.read_bytes() == target.read_bytes()
    assert "version 3" in _apply_fails(tmp_path / "v3", base, _join(header, ops, version=3))
