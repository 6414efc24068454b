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


def _roomy(header: dict, tar_size: int = 2**40) -> dict:
    """Declare a huge target (within gzip's ratio), so only per-op limits can stop an op."""
    header["target"]["tar_size"] = tar_size
    header["target"]["size"] = tar_size // 1000
    return header


_DIFF_CAP = "binary-diff ops are limited"


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (
            bytes([fmt.OP_ZLIT]) + struct.pack(">II", 2**32 - 1, 10) + bytes(10),  # 4 GiB literal
            "over the limit of 268435456",
        ),
        (bytes([fmt.OP_COPY]) + struct.pack(">QQ", 0, 2**60), "beyond the end of the base"),
        (bytes([fmt.OP_COPY]) + struct.pack(">QQ", 2**62, 16), "beyond the end of the base"),
        (
            bytes([fmt.OP_META]) + struct.pack(">II", 2**31, 4),  # 2 GiB meta piece
            "over the limit of 67108864",
        ),
        (
            bytes([fmt.OP_ZPREFIX]) + struct.pack(">QIII", 0, 2**31, 100, 4) + bytes(4),
            "2147483648 base bytes, over",
        ),
        (
            bytes([fmt.OP_BSDIFF]) + struct.pack(">QIIIII", 0, 64, 100, 2**31, 0, 0),
            "runs past the end of the file",
        ),
        (
            bytes([fmt.OP_HDIFF]) + struct.pack(">QIIII", 0, 64, 100, 2**31, 4) + bytes(4),
            "a 2147483648-byte diff for 100 bytes",
        ),
        (
            bytes([fmt.OP_HDIFF]) + struct.pack(">QIIII", 0, 2**31, 100, 100, 4) + bytes(4),
            _DIFF_CAP,
        ),
        # Within the 256 MiB piece limit but over what the encoder ever diffs (finding 11).
        (bytes([fmt.OP_BSDIFF]) + struct.pack(">QIIIII", 0, 64, 64 << 20, 0, 0, 0), _DIFF_CAP),
        (bytes([fmt.OP_BSDIFF]) + struct.pack(">QIIIII", 0, 64 << 20, 100, 0, 0, 0), _DIFF_CAP),
        (
            bytes([fmt.OP_HDIFF]) + struct.pack(">QIIII", 0, 64, 64 << 20, 100, 4) + bytes(4),
            _DIFF_CAP,
        ),
        (bytes([77]), "unknown op 77"),
    ],
    ids=[
        "zlit-4GiB",
        "copy-2^60",
        "copy-past-base",
        "meta-2GiB",
        "zprefix-base-2GiB",
        "bsdiff-block-2GiB",
        "hdiff-raw-2GiB",
        "hdiff-base-2GiB",
        "bsdiff-out-64MiB",
        "bsdiff-base-64MiB",
        "hdiff-out-64MiB",
        "unknown",
    ],
)
def test_crafted_ops_are_refused_before_allocating(
    tmp_path: Path, pair: tuple[Path, Path, bytes], op: bytes, message: str
) -> None:
    """Each op is stopped by its own check, not by a small declared target."""
    base, delta, _ = pair
    header, _ = _split(delta.read_bytes())
    error = _apply_fails(tmp_path, base, _join(_roomy(header), op + bytes([fmt.OP_END])))
    assert message in error, error


def _small_window_bomb(size: int) -> bytes:
    """A frame with no content size and a 1 KiB window: only max_length can stop it."""
    from krill.delta.zstdlib import zstd

    options = {
        zstd.CompressionParameter.window_log: 10,
        zstd.CompressionParameter.content_size_flag: 0,
    }
    c = zstd.ZstdCompressor(options=options)
    return c.compress(bytes(size)) + c.flush()


def test_zstd_bomb_is_cut_at_the_declared_length(
    tmp_path: Path, pair: tuple[Path, Path, bytes]
) -> None:
    """A frame expanding far past its op's length stops at the length and is refused."""
    base, delta, _ = pair
    header, _ = _split(delta.read_bytes())
    bomb = _small_window_bomb(16 << 20)
    _roomy(header, 8 << 20)  # room for the streamed case
    for i, out_len in enumerate([1000, 5 << 20]):  # decoded in a worker / streamed
        op = fmt.encode_zlit(out_len, bomb) + bytes([fmt.OP_END])
        error = _apply_fails(tmp_path / str(i), base, _join(header, op))
        assert "longer than its op declares" in error, error


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
    from krill.delta.opdecode import decode_content as _decode_content

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


# --- declared sizes, expected target, in-flight memory, header JSON (review findings) ---------


def test_output_stops_at_the_declared_layer_size(
    tmp_path: Path, pair: tuple[Path, Path, bytes]
) -> None:
    """Replayed COPY ops cannot write past target.size into the temp file beside OUT."""
    base, delta, _ = pair
    header, _ = _split(delta.read_bytes())
    base_tar_size = header["base"]["tar_size"]
    header["target"]["tar_size"] = 1000 * header["target"]["size"]  # within gzip's ratio
    ops = fmt.encode_copy(0, base_tar_size) * 200 + bytes([fmt.OP_END])
    error = _apply_fails(tmp_path, base, _join(header, ops))
    assert "grows past the" in error and "target.size" in error, error


@pytest.mark.parametrize("recipe", ["gzip", "identity"])
def test_tar_size_the_blob_cannot_hold_is_refused(
    tmp_path: Path, pair: tuple[Path, Path, bytes], recipe: str
) -> None:
    base, delta, _ = pair
    header, ops = _split(delta.read_bytes())
    header["target"]["tar_size"] = 2**40  # under MAX_TAR_BYTES, far over 1040 x a 40 KB blob
    if recipe == "identity":
        header["recipe"] = {"kind": "identity"}
        header["target"]["tar_size"] = header["target"]["size"] + 512
    error = _apply_fails(tmp_path, base, _join(header, ops))
    assert ("maximum ratio" if recipe == "gzip" else "must equal its size") in error, error


def test_rebuild_layer_checks_the_wanted_target_before_any_work(
    tmp_path: Path, pair: tuple[Path, Path, bytes]
) -> None:
    """The agent passes the manifest's digest and size; a mismatch fails before the base is read."""
    from krill.delta import read_delta_header, rebuild_layer

    base, delta, target = pair
    want = read_delta_header(delta).target
    missing_base = tmp_path / "no-such-base"  # never opened when the header already disagrees
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DeltaFormatError, match="not the wanted layer"):
        rebuild_layer(missing_base, delta, out, expected_digest="sha256:" + "0" * 64)
    with pytest.raises(DeltaFormatError, match="the manifest says"):
        rebuild_layer(missing_base, delta, out, expected_size=want.size + 1)
    corrupt = tmp_path / "corrupt.krd"  # the header is checked even before the trailer's hash
    corrupt.write_bytes(delta.read_bytes()[:-1] + b"\0")
    with pytest.raises(DeltaFormatError, match="not the wanted layer"):
        rebuild_layer(missing_base, corrupt, out, expected_digest="sha256:" + "0" * 64)
    assert list(out.iterdir()) == []
    result = rebuild_layer(base, delta, out, expected_digest=want.digest, expected_size=want.size)
    assert result.path.read_bytes() == target


def _meta_ops_delta(base: Path, delta: Path, pieces: int, piece: int) -> bytes:
    """A delta of ``pieces`` META ops of ``piece`` zero bytes each (valid meta stream)."""
    import gzip
    import io

    from krill.delta.tarscan import scan_meta_prefix
    from krill.delta.zstdlib import zstd

    header, _ = _split(delta.read_bytes())
    meta = header["meta"]
    tar = gzip.decompress(base.read_bytes())
    prefix = scan_meta_prefix(io.BytesIO(tar), len(tar), meta["small_file_limit"], 1 << 30)
    prefix = prefix[: meta["prefix_len"]]
    c = zstd.ZstdCompressor(
        options={zstd.CompressionParameter.window_log: meta["window_log"]},
        zstd_dict=zstd.ZstdDict(prefix, is_raw=True).as_prefix,
    )
    ops = b"".join(
        fmt.encode_meta(piece, c.compress(bytes(piece), mode=c.FLUSH_BLOCK)) for _ in range(pieces)
    )
    ops += fmt.encode_meta(0, c.flush(mode=c.FLUSH_FRAME)) + bytes([fmt.OP_END])
    return _join(_roomy(header), ops)


def test_meta_ops_count_against_the_in_flight_budget(
    tmp_path: Path, pair: tuple[Path, Path, bytes]
) -> None:
    """Decoded META pieces wait in the queue like content: at most 32 MiB + one op is held.

    12 pieces of 8 MiB with 4 workers: uncounted, all 12 (96 MiB) would be queued.
    """
    import tracemalloc

    from krill.delta.opqueue import IN_FLIGHT_BYTES

    base, delta, _ = pair
    crafted = tmp_path / "meta.krd"
    crafted.write_bytes(_meta_ops_delta(base, delta, pieces=12, piece=8 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(DeltaFormatError, match="delta ended before"):
            apply_delta(base, crafted, tmp_path / "out", workers=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < IN_FLIGHT_BYTES + 3 * (8 << 20), f"peak {peak >> 20} MiB"


def _header_bytes(text: str) -> bytes:
    body = text.encode()
    return struct.pack(">8sHI", fmt.MAGIC, fmt.VERSION, len(body)) + body


def test_deeply_nested_header_is_a_format_error() -> None:
    import io

    with pytest.raises(DeltaFormatError, match="nested too deeply"):
        fmt.read_header(io.BytesIO(_header_bytes("[" * 100_000 + "]" * 100_000)))


def test_infinity_in_header_is_a_format_error(
    tmp_path: Path, pair: tuple[Path, Path, bytes]
) -> None:
    base, delta, _ = pair
    header, ops = _split(delta.read_bytes())
    text = json.dumps(header).replace('"level": 6', '"level": Infinity')
    assert "Infinity" in text
    data = _resign(_header_bytes(text) + ops + bytes(32))
    assert "Infinity is not a JSON number" in _apply_fails(tmp_path, base, data)


@pytest.mark.parametrize("kind", ["gzip-zlib", "zstd"])
@pytest.mark.parametrize("level", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_recipe_level_is_a_recipe_error(kind: str, level: float) -> None:
    from krill.delta.recipes import ZSTD_VERSION, Recipe, gzip_recipe, zstd_recipe

    doc = (gzip_recipe() if kind == "gzip-zlib" else zstd_recipe()).to_json()
    assert doc.get("libzstd", ZSTD_VERSION) == ZSTD_VERSION
    doc["level"] = level
    with pytest.raises(RecipeError, match=f"bad {kind} recipe"):
        Recipe.from_json(doc)


# --- the applier scans only the base headers its meta prefix needs (finding 17) -------------


class _ReadTracker:
    """A file over bytes that remembers the furthest offset read."""

    def __init__(self, data: bytes) -> None:
        import io

        self._f = io.BytesIO(data)
        self.furthest = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.furthest = max(self.furthest, self._f.tell())
        return data


def _many_files_tar() -> bytes:
    rng = random.Random(5)
    files = {
        f"d/f{i:04d}": Entry("file", rng.randbytes(rng.choice([100, 6000]))) for i in range(400)
    }
    files["d/\u00e9t\u00e9"] = Entry("file", b"non-ascii name")
    return build_tar(files)


@pytest.mark.parametrize("cap", [0, 1, 511, 4096, 70_000, 1 << 30])
def test_lazy_meta_prefix_equals_the_full_scan(cap: int) -> None:
    import io

    from krill.delta.tarscan import read_meta_prefix, scan, scan_meta_prefix

    tar = _many_files_tar()
    full = read_meta_prefix(io.BytesIO(tar), scan(io.BytesIO(tar), len(tar)), 4096, cap)
    assert scan_meta_prefix(io.BytesIO(tar), len(tar), 4096, cap) == full
    garbage_tail = tar[: len(tar) // 2] + b"\x01" * (len(tar) - len(tar) // 2)
    full = read_meta_prefix(
        io.BytesIO(garbage_tail), scan(io.BytesIO(garbage_tail), len(tar)), 4096, cap
    )
    assert scan_meta_prefix(io.BytesIO(garbage_tail), len(tar), 4096, cap) == full


def test_lazy_meta_prefix_stops_reading_at_its_cap() -> None:
    from krill.delta.tarscan import scan_meta_prefix

    tar = _many_files_tar()
    f = _ReadTracker(tar)
    prefix = scan_meta_prefix(f, len(tar), 4096, 20_000)  # type: ignore[arg-type]
    assert len(prefix) == 20_000
    assert f.furthest < len(tar) // 4, (f.furthest, len(tar))


@settings(max_examples=60, deadline=None)
@given(cap=st.integers(0, 400_000), limit=st.sampled_from([0, 100, 4096, 1 << 20]))
def test_lazy_meta_prefix_equals_the_full_scan_anywhere(cap: int, limit: int) -> None:
    import io

    from krill.delta.tarscan import read_meta_prefix, scan, scan_meta_prefix

    tar = _MANY_FILES_TAR
    full = read_meta_prefix(io.BytesIO(tar), scan(io.BytesIO(tar), len(tar)), limit, cap)
    assert scan_meta_prefix(io.BytesIO(tar), len(tar), limit, cap) == full


_MANY_FILES_TAR = _many_files_tar()
