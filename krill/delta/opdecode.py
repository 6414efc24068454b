"""Decoding one content op of a delta into exactly the bytes it declares.

Every op is untrusted input: a zstd frame may claim any size, a bsdiff
control block any offsets, an HDiffPatch diff any sections. Each decoder
therefore bounds its output by the op's ``out_len`` (zstd's ``max_length``,
the window by the op's sizes) and checks the length it got, so a crafted op
ends in DeltaFormatError, never in a large allocation or a wrong length.
Ops up to STREAM_OP_BYTES are decoded whole (in worker threads: zstd,
bsdiff4 and HDiffPatch release the GIL); larger ones stream to the writer.

The binary-diff decoders (bsdiff4, hdiff.py, elf.py; ~2 ms with bytecode cached)
are imported by the first op that needs them, not with this module: a delta
of zstd ops alone (most layers of data or scripts) never does, and
``krill delta apply``'s start is timed by its users (issue 15).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from krill.delta import format as fmt
from krill.delta.format import DeltaFormatError
from krill.delta.layerfiles import window_log_for
from krill.delta.ranges import CHUNK, Range, read_range
from krill.delta.zstdlib import zstd

__all__ = ["STREAM_OP_BYTES", "base_short", "decode_content", "read_base", "stream_content"]

# Content ops rebuilding more than this are decoded in the writer, streaming, not in a worker:
# memory then stays near base range + window instead of base + window + output + copies.
STREAM_OP_BYTES = 4 << 20


def base_short() -> DeltaFormatError:
    """The applier's short read: the delta points past the end of its base."""
    return DeltaFormatError("base tar shorter than the delta expects")


def read_base(base: BinaryIO, offset: int, size: int) -> bytes:
    """An op's base range, in one buffer."""
    return read_range(base, Range(offset, size), base_short)


def decode_content(op: fmt.Op, base: bytes) -> bytes:
    """Rebuild one content piece (worker thread); exactly ``op.out_len`` bytes or an error."""
    try:
        if op.kind == fmt.OP_ZLIT:
            data = _unzstd(op.payload[0], op.out_len, window_log_for(op.out_len))
        elif op.kind == fmt.OP_ZPREFIX:
            window = window_log_for(op.base_len + op.out_len)
            data = _unzstd(op.payload[0], op.out_len, window, base)
        elif op.kind == fmt.OP_BSDIFF:
            data = _unbsdiff(op, base)
        elif op.kind == fmt.OP_HDIFF:
            data = _unhdiff(op, base)
        elif op.kind == fmt.OP_ELF:
            data = _unelf(op, base)
        else:
            raise DeltaFormatError(f"op {op.kind} carries no content")
    except (zstd.ZstdError, EOFError, ValueError, MemoryError) as exc:
        if isinstance(exc, DeltaFormatError):
            raise
        raise DeltaFormatError(f"corrupt content op: {exc}") from exc
    if len(data) != op.out_len:
        raise DeltaFormatError("content op rebuilt the wrong number of bytes")
    return data


def stream_content(op: fmt.Op, base: BinaryIO, write: Callable[[bytes], None]) -> None:
    """Decode a large op straight into the output (zstd a chunk at a time)."""
    if op.kind in (fmt.OP_BSDIFF, fmt.OP_HDIFF, fmt.OP_ELF):  # whole buffers (3-4x the file), alone
        data = decode_content(op, read_base(base, op.base_off, op.base_len))
        for start in range(0, len(data), CHUNK):
            write(data[start : start + CHUNK])
        return
    window = window_log_for(op.base_len + op.out_len if op.kind == fmt.OP_ZPREFIX else op.out_len)
    prefix = None
    if op.kind == fmt.OP_ZPREFIX:
        prefix = read_base(base, op.base_off, op.base_len)
    decoder = _decoder(window, prefix)
    left = op.out_len
    data = op.payload[0]
    try:
        while left:
            chunk = decoder.decompress(data, max_length=min(left, CHUNK))
            data = b""
            if not chunk:
                raise DeltaFormatError("content frame ends before its op's length")
            left -= len(chunk)
            write(chunk)
        _expect_frame_end(decoder)
    except (zstd.ZstdError, EOFError) as exc:
        raise DeltaFormatError(f"corrupt content op: {exc}") from exc


def _decoder(window_log: int, prefix: bytes | None) -> zstd.ZstdDecompressor:
    """A zstd decoder whose window is bounded by the op's sizes, with the base as prefix."""
    if prefix is not None and len(prefix) < 8:
        raise DeltaFormatError("prefix op with a base range under 8 bytes")
    zstd_dict = zstd.ZstdDict(prefix, is_raw=True).as_prefix if prefix is not None else None
    options: dict[int, int] = {zstd.DecompressionParameter.window_log_max: window_log}
    return zstd.ZstdDecompressor(zstd_dict=zstd_dict, options=options)


def _expect_frame_end(decoder: zstd.ZstdDecompressor) -> None:
    """The frame ends exactly at the op's length, with nothing after it.

    The decoder stops early when output hit max_length, so it is asked for one
    more byte first: any byte means the frame is longer than the op declares.
    """
    if not decoder.eof and decoder.decompress(b"", max_length=1):
        raise DeltaFormatError("content frame is longer than its op declares")
    if not decoder.eof or decoder.unused_data:
        raise DeltaFormatError("content frame is longer than its op declares, or incomplete")


def _unzstd(comp: bytes, out_len: int, window_log: int, prefix: bytes | None = None) -> bytes:
    """One complete zstd frame, at most ``out_len`` bytes, window bounded by the op's sizes."""
    decoder = _decoder(window_log, prefix)
    chunks = []
    left = out_len
    while left and not decoder.eof:
        chunk = decoder.decompress(comp, max_length=min(left, STREAM_OP_BYTES))
        comp = b""
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    _expect_frame_end(decoder)
    del decoder  # frees the window before the pieces are joined
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _unbsdiff(op: fmt.Op, base: bytes) -> bytes:
    control_z, diff_z, extra_z = op.payload
    control_max = max(1 << 20, op.out_len)
    control = _unzstd(control_z, control_max, window_log_for(control_max))
    diff = _unzstd(diff_z, op.out_len, window_log_for(op.out_len))
    extra = _unzstd(extra_z, op.out_len, window_log_for(op.out_len))
    if len(control) % 24:
        raise DeltaFormatError("bsdiff control block is not a whole number of entries")
    from bsdiff4 import core as bsdiff_core

    patched: bytes = bsdiff_core.patch(base, op.out_len, control, diff, extra)
    return patched


def _unhdiff(op: fmt.Op, base: bytes) -> bytes:
    from krill.delta import hdiff

    raw = _unzstd(op.payload[0], op.raw_len, window_log_for(op.raw_len))
    if len(raw) != op.raw_len:
        raise DeltaFormatError("hdiff diff is shorter than its op declares")
    try:
        return hdiff.patch(base, raw, op.out_len)
    except hdiff.HDiffError as exc:
        raise DeltaFormatError(str(exc)) from exc


def _unelf(op: fmt.Op, base: bytes) -> bytes:
    from krill.delta import elf

    raw = _unzstd(op.payload[0], op.raw_len, window_log_for(op.raw_len))
    if len(raw) != op.raw_len:
        raise DeltaFormatError("ELF op's payload is shorter than it declares")
    side, diff = raw[: op.side_len], raw[op.side_len :]
    del raw
    try:
        return elf.patch(base, side, diff, op.out_len)
    except elf.ElfError as exc:
        raise DeltaFormatError(str(exc)) from exc
