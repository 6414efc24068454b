"""Crafted ops meet the applier's limits: refused before allocating, bounded while running.

Every length in an op is checked against hard limits and the header's sizes
before anything is read or allocated; decoders stop at the op's declared
length; queued ops stay within the in-flight budget; the output stays
within the layer size the header declares.
"""

from __future__ import annotations

import gzip
import io
import struct
import tracemalloc
from pathlib import Path

import hdiffpatch
import pytest

from krill.delta import DeltaFormatError, apply_delta, hdiff
from krill.delta import format as fmt
from krill.delta.opdecode import decode_content
from krill.delta.opqueue import IN_FLIGHT_BYTES
from krill.delta.tarscan import scan_meta_prefix
from krill.delta.zstdlib import zstd
from tests.delta_crafting import (
    Pair,
    apply_fails,
    base_tar_head,
    join,
    make_pair,
    roomy,
    zstd_frame,
)

_END = bytes([fmt.OP_END])
_DIFF_CAP = "binary-diff ops are limited"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return make_pair(tmp_path_factory.mktemp("pair"))


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
    tmp_path: Path, pair: Pair, op: bytes, message: str
) -> None:
    """Each op is stopped by its own check, not by a small declared target."""
    header, _ = pair.parts()
    error = apply_fails(tmp_path, pair.base, join(roomy(header), op + _END))
    assert message in error, error


def _small_window_bomb(size: int) -> bytes:
    """A frame with no content size and a 1 KiB window: only max_length can stop it."""
    options: dict[int, int] = {
        zstd.CompressionParameter.window_log: 10,
        zstd.CompressionParameter.content_size_flag: 0,
    }
    c = zstd.ZstdCompressor(options=options)
    return c.compress(bytes(size)) + c.flush()


def test_zstd_bomb_is_cut_at_the_declared_length(tmp_path: Path, pair: Pair) -> None:
    """A frame expanding far past its op's length stops at the length and is refused."""
    header, _ = pair.parts()
    bomb = _small_window_bomb(16 << 20)
    roomy(header, 8 << 20)  # room for the streamed case
    for i, out_len in enumerate([1000, 5 << 20]):  # decoded in a worker / streamed
        op = fmt.encode_zlit(out_len, bomb) + _END
        error = apply_fails(tmp_path / str(i), pair.base, join(header, op))
        assert "longer than its op declares" in error, error


def test_corrupt_bsdiff_control_is_refused(tmp_path: Path, pair: Pair) -> None:
    header, _ = pair.parts()
    control = struct.pack("<qqq", 2**40, 2**40, -(2**40))
    blocks = (zstd_frame(control), zstd_frame(b""), zstd_frame(b""))
    op = fmt.encode_bsdiff(0, 512, 100, blocks) + _END
    apply_fails(tmp_path, pair.base, join(header, op))


def _hdiff_op(old: bytes, new: bytes, raw: bytes, out_len: int | None = None) -> bytes:
    out_len = len(new) if out_len is None else out_len
    return fmt.encode_hdiff(0, len(old), out_len, len(raw), zstd_frame(raw)) + _END


def _corrupt_covers(raw: bytes) -> bytes:
    header = hdiff.parse_header(raw)
    data = bytearray(raw)
    for i in range(header.header_len, header.header_len + header.sections[0]):
        data[i] = 0xFF  # every cover points far past the old data
    return bytes(data)


def _changed_head(base: Path) -> tuple[bytes, bytes, bytes]:
    """4 KiB of the base's tar, the same with 8 bytes changed and cut, and their hdiff."""
    old = base_tar_head(base, 4096)
    new = old[:1000] + b"changed!" + old[1008:3000]
    return old, new, hdiff.diff(old, new)


@pytest.mark.parametrize("case", ["not_hdiff", "other_sizes", "compressed", "bad_covers"])
def test_crafted_hdiff_ops_are_refused(tmp_path: Path, pair: Pair, case: str) -> None:
    """OP_HDIFF payloads are checked against the op before HDiffPatch sees them."""
    header, _ = pair.parts()
    old, new, raw = _changed_head(pair.base)
    op = {
        "not_hdiff": lambda: _hdiff_op(old, new, b"not a diff at all" * 10),
        "other_sizes": lambda: _hdiff_op(old, new, raw, out_len=len(new) + 1),
        "compressed": lambda: _hdiff_op(old, new, hdiffpatch.diff(old, new, "zstd")),
        "bad_covers": lambda: _hdiff_op(old, new, _corrupt_covers(raw)),
    }[case]()
    message = apply_fails(tmp_path, pair.base, join(header, op))
    assert "hdiff" in message.lower(), message


def test_hdiff_op_rebuilds_exactly(pair: Pair) -> None:
    """The same op, uncorrupted, decodes to ``new``; only the layer digest then differs."""
    old, new, raw = _changed_head(pair.base)
    reader_op = fmt.Op(fmt.OP_HDIFF, len(new), 0, len(old), (zstd_frame(raw),), len(raw))
    assert decode_content(reader_op, old) == new
    bad = fmt.Op(fmt.OP_HDIFF, len(new), 0, len(old), (zstd_frame(_corrupt_covers(raw)),), len(raw))
    with pytest.raises(DeltaFormatError):
        decode_content(bad, old)


def test_output_stops_at_the_declared_layer_size(tmp_path: Path, pair: Pair) -> None:
    """Replayed COPY ops cannot write past target.size into the temp file beside OUT."""
    header, _ = pair.parts()
    base_tar_size = header["base"]["tar_size"]
    header["target"]["tar_size"] = 1000 * header["target"]["size"]  # within gzip's ratio
    ops = fmt.encode_copy(0, base_tar_size) * 200 + _END
    error = apply_fails(tmp_path, pair.base, join(header, ops))
    assert "grows past the" in error and "target.size" in error, error


def _meta_ops_delta(pair: Pair, pieces: int, piece: int) -> bytes:
    """A delta of ``pieces`` META ops of ``piece`` zero bytes each (valid meta stream)."""
    header, _ = pair.parts()
    meta = header["meta"]
    tar = gzip.decompress(pair.base.read_bytes())
    prefix = scan_meta_prefix(io.BytesIO(tar), len(tar), meta["small_file_limit"], 1 << 30)
    prefix = prefix[: meta["prefix_len"]]
    c = zstd.ZstdCompressor(
        options={zstd.CompressionParameter.window_log: meta["window_log"]},
        # The encoder may cut the prefix to nothing (krill/delta/metaprefix.py).
        zstd_dict=zstd.ZstdDict(prefix, is_raw=True).as_prefix if len(prefix) >= 8 else None,
    )
    ops = b"".join(
        fmt.encode_meta(piece, c.compress(bytes(piece), mode=c.FLUSH_BLOCK)) for _ in range(pieces)
    )
    ops += fmt.encode_meta(0, c.flush(mode=c.FLUSH_FRAME)) + _END
    return join(roomy(header), ops)


def test_meta_ops_count_against_the_in_flight_budget(tmp_path: Path, pair: Pair) -> None:
    """Decoded META pieces wait in the queue like content: at most 32 MiB + one op is held.

    12 pieces of 8 MiB with 4 workers: uncounted, all 12 (96 MiB) would be queued.
    """
    crafted = tmp_path / "meta.krd"
    crafted.write_bytes(_meta_ops_delta(pair, pieces=12, piece=8 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(DeltaFormatError, match="delta ended before"):
            apply_delta(pair.base, crafted, tmp_path / "out", workers=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < IN_FLIGHT_BYTES + 3 * (8 << 20), f"peak {peak >> 20} MiB"
