"""The meta stream: every target byte that is not a large file's content.

Tar headers, padding, small files and end-of-archive blocks are one zstd
frame, flushed at each META op and compressed with the *base's* meta stream
as prefix, so unchanged headers cost a few bytes. The encoder writes it with
MetaCoder; the applier rebuilds the same prefix by scanning the base and
checks its hash before decoding, since a different prefix would decode to
other bytes without any error from zstd.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO

from krill.delta import format as fmt
from krill.delta.format import DeltaFormatError
from krill.delta.tarscan import scan_meta_prefix
from krill.delta.zstdlib import zstd

__all__ = ["MetaCoder", "decode_meta", "open_meta_decoder"]


class MetaCoder:
    """One zstd frame over the meta stream, flushed per op, prefixed by the base's meta."""

    def __init__(self, prefix: bytes, meta: fmt.MetaParams, level: int) -> None:
        params: dict[int, int] = {
            zstd.CompressionParameter.compression_level: level,
            zstd.CompressionParameter.window_log: meta.window_log,
            zstd.CompressionParameter.enable_long_distance_matching: 1,
        }
        zstd_dict = zstd.ZstdDict(prefix, is_raw=True).as_prefix if len(prefix) >= 8 else None
        self._c = zstd.ZstdCompressor(options=params, zstd_dict=zstd_dict)

    def encode(self, data: bytes) -> bytes:
        return fmt.encode_meta(len(data), self._c.compress(data, mode=self._c.FLUSH_BLOCK))

    def finish(self) -> bytes:
        return fmt.encode_meta(0, self._c.flush(mode=self._c.FLUSH_FRAME))


def open_meta_decoder(
    base: BinaryIO, base_size: int, meta: fmt.MetaParams
) -> zstd.ZstdDecompressor:
    """The applier's decoder, primed with the base's meta prefix once its hash matches."""
    prefix = scan_meta_prefix(base, base_size, meta.small_file_limit, meta.prefix_len)
    if len(prefix) != meta.prefix_len or hashlib.sha256(prefix).hexdigest() != meta.prefix_sha256:
        raise DeltaFormatError(
            "the base's header stream differs from the one the delta was made against "
            "(different base, or a delta from an incompatible Krill version)"
        )
    options: dict[int, int] = {zstd.DecompressionParameter.window_log_max: meta.window_log}
    zstd_dict = zstd.ZstdDict(prefix, is_raw=True).as_prefix if len(prefix) >= 8 else None
    return zstd.ZstdDecompressor(zstd_dict=zstd_dict, options=options)


def decode_meta(decoder: zstd.ZstdDecompressor, op: fmt.Op) -> bytes:
    """The next ``op.out_len`` bytes of the meta stream, exactly."""
    try:
        data = decoder.decompress(op.payload[0], max_length=op.out_len)
    except (zstd.ZstdError, EOFError) as exc:
        raise DeltaFormatError(f"corrupt meta stream: {exc}") from exc
    if len(data) != op.out_len:
        raise DeltaFormatError("meta stream piece has the wrong length")
    return data
