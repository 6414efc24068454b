"""The recipes' streaming compressors: tar chunks in, the blob's exact bytes out.

Split from recipes.py (which says which setting a blob was made with and
parses it) to keep each module short; ``RecipeError`` lives here because the
parallel Go compressor raises it, and recipes.py re-exports both names.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from krill.delta.gogzip import GoGzipWriter
from krill.delta.restarts import RestartError, RestartPoint
from krill.delta.segwriter import ParallelGoGzipWriter, ReuseFor, SegmentedWriter
from krill.delta.zstdlib import zstd

if TYPE_CHECKING:  # zlib's restart machinery loads with the first gzip-zlib recipe that has points
    from krill.delta.zlibrestarts import ZlibPoint, ZlibSetting

__all__ = [
    "Compressor",
    "GzipGo",
    "GzipZlib",
    "Identity",
    "ParallelGzip",
    "RecipeError",
    "Zstd",
    "gzip_go_parallel",
    "gzip_zlib_parallel",
]


class RecipeError(ValueError):
    """The blob's compression cannot be reproduced (so no delta can target it)."""


class Compressor:
    """Streaming compressor: ``feed`` tar chunks, then ``finish``; returns blob bytes."""

    def feed(self, data: bytes) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        raise NotImplementedError


class Identity(Compressor):
    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class GzipZlib(Compressor):
    def __init__(self, header: bytes, level: int, mem_level: int, strategy: int) -> None:
        self._pending_header = header
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, mem_level, strategy)
        self._crc = 0
        self._size = 0

    def feed(self, data: bytes) -> bytes:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        out = self._pending_header + self._deflate.compress(data)
        self._pending_header = b""
        return out

    def finish(self) -> bytes:
        tail = self._deflate.flush(zlib.Z_FINISH)
        trailer = struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF)
        out = self._pending_header + tail + trailer
        self._pending_header = b""
        return out


class GzipGo(GoGzipWriter, Compressor):
    """Go's gzip (``GoGzipWriter``) as a recipe's compressor."""


class ParallelGzip(Compressor):
    """A ``SegmentedWriter`` (Go's or zlib's gzip from proven restart points) as a
    recipe's compressor: its RestartError is the recipe's failure."""

    def __init__(self, family: str, make: Callable[[], SegmentedWriter[Any]]) -> None:
        self._family = family
        with self._errors():
            self._writer = make()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except RestartError as exc:
            if hasattr(self, "_writer"):
                self._writer.close()
            raise RecipeError(f"{self._family} restart points: {exc}") from exc

    def feed(self, data: bytes) -> bytes:
        with self._errors():
            return self._writer.feed(data)

    def finish(self) -> bytes:
        with self._errors():
            return self._writer.finish()


def gzip_go_parallel(
    header: bytes,
    level: int,
    points: Sequence[RestartPoint],
    tar_size: int,
    workers: int,
    spill_dir: str | None = None,
    reuse: ReuseFor | None = None,
) -> ParallelGzip:
    """Go's gzip from proven restart points, segments on several threads; ``reuse``: a
    segment's spans whose tokens come from the base blob (segreuse.py)."""
    return ParallelGzip(
        "gzip-go",
        lambda: ParallelGoGzipWriter(header, level, points, tar_size, workers, spill_dir, reuse),
    )


def gzip_zlib_parallel(
    header: bytes,
    setting: ZlibSetting,
    points: Sequence[ZlibPoint],
    end_bit: int,
    tar_size: int,
    workers: int,
    spill_dir: str | None = None,
) -> ParallelGzip:
    """zlib's gzip from proven restart points (levels 4-9), segments on several threads.

    ``spill_dir``: where a long segment's input may wait on disk so the writer runs
    ahead of it (``segstream.py``); None: the writer waits for that segment."""
    from krill.delta.zlibrestarts import ParallelZlibWriter  # ~5 ms other recipes do not pay

    return ParallelGzip(
        "gzip-zlib",
        lambda: ParallelZlibWriter(header, setting, points, end_bit, tar_size, workers, spill_dir),
    )


class Zstd(Compressor):
    def __init__(self, options: dict[Any, int], tar_size: int, pledge: bool) -> None:
        self._c = zstd.ZstdCompressor(options=options)
        if pledge:
            self._c.set_pledged_input_size(tar_size)

    def feed(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def finish(self) -> bytes:
        return self._c.flush()
