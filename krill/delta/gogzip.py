"""Go-made gzip, reproduced: the compressor and candidates of the ``gzip-go`` recipe.

Docker, BuildKit, crane and ko compress layers with Go's ``compress/gzip``,
whose deflate differs from zlib's (its own hash chains, lazy matching, level-1
fast path, Huffman construction and block choice), so no zlib setting
reproduces it. ``krill._goflate`` (``krill/_native/goflate.c``) is a C port of
Go's ``compress/flate`` verified byte for byte against Go 1.19 at every level
(-2 HuffmanOnly, 0 … 9; -1 is 6); this module adds Go's gzip framing: the
header bytes as found in the blob, then CRC-32 and ISIZE.

Go's output depends on how the input was split across ``Write`` calls, but
only when a call ends within 262 bytes of a full 64 KiB window *and* a match
of distance near 32 KiB is then lost (measured: a tar of 4.5 MB of Python
files gave the same bytes for writes of 300 B … 64 KiB and one write; a
crafted input differs). The compressor here behaves as one ``Write`` of the
whole tar; a layer whose writer's splits mattered is simply not reproduced,
and detection, which compares, says so.

Speed on this machine: see docs/benchmarks.md ("Go-made gzip").
"""

from __future__ import annotations

import importlib
import struct
import zlib
from collections.abc import Callable
from typing import Protocol

from krill.delta.restarts import RestartPoint

__all__ = [
    "GO_LEVELS",
    "GO_OS_UNKNOWN",
    "GoGzipWriter",
    "candidate_levels",
    "go_header",
    "looks_go_made",
    "missing_reason",
]

# compress/gzip's levels: HuffmanOnly, NoCompression, BestSpeed … BestCompression (-1 is 6).
GO_LEVELS = (-2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
# What Go's gzip.Writer puts in byte 9 unless the program sets Header.OS.
GO_OS_UNKNOWN = 255
# Go levels by how often layers use them: 6 is gzip.NewWriter's default (Docker, BuildKit);
# crane and ko write 1 (BestSpeed), whose XFL byte says so, as 9's does.
_XFL_NONE_LEVELS = (6, 5, 4, 3, 2, 7, 8, 0, -2)


class _Deflater(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def write(self, data: bytes, /) -> bytes: ...

    def finish(self) -> bytes: ...

    def restart_points(self) -> list[tuple[int, int, int, int, int, int]]: ...


def _load() -> tuple[Callable[..., _Deflater] | None, str | None]:
    try:
        module = importlib.import_module("krill._goflate")
    except ImportError as exc:
        return None, (
            f"Krill's C extension krill._goflate is not built here ({exc}); "
            "reinstall krill (`pip install .`, which needs a C compiler) to rebuild Go-made layers"
        )
    deflater: Callable[..., _Deflater] = module.Deflater
    return deflater, None


_new_deflater, _missing = _load()


def missing_reason() -> str | None:
    """Why this node cannot run the recipe (the extension is not built), or None."""
    return _missing


def go_header(level: int) -> bytes:
    """The 10 header bytes Go's gzip.Writer writes with no name, comment, extra or mtime."""
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    return bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, xfl, GO_OS_UNKNOWN])


def looks_go_made(header: bytes) -> bool:
    """A header Go writes by default: 10 bytes, no flags, OS "unknown" (Python's gzip too)."""
    return len(header) == 10 and header[3] == 0 and header[9] == GO_OS_UNKNOWN


def candidate_levels(header: bytes) -> tuple[int, ...]:
    """Go levels that could have written ``header``: Go sets XFL from the level alone."""
    xfl = header[8] if len(header) > 8 else 0
    if xfl == 2:
        return (9,)
    if xfl == 4:
        return (1,)
    if xfl == 0:
        return _XFL_NONE_LEVELS
    return ()


class GoGzipWriter:
    """Streaming gzip exactly as Go's ``gzip.NewWriterLevel(w, level)`` writes it.

    ``feed`` tar chunks (any sizes: the output is that of one Go ``Write`` of
    their concatenation), then ``finish``; both return the blob's next bytes.
    With ``record_every`` (levels 4-9), the encoder notes a restart point about
    every that many tar bytes (``restart_points``, see restarts.py).
    """

    def __init__(self, header: bytes, level: int, *, record_every: int = 0) -> None:
        if _new_deflater is None:
            raise RuntimeError(_missing)
        self._deflater = _new_deflater(level, record_every=record_every)
        self._pending_header = header
        self._crc = 0
        self._size = 0

    def feed(self, data: bytes) -> bytes:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        out = self._pending_header + self._deflater.compress(data)
        self._pending_header = b""
        return out

    def finish(self) -> bytes:
        trailer = struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF)
        out = self._pending_header + self._deflater.finish() + trailer
        self._pending_header = b""
        return out

    def restart_points(self) -> list[RestartPoint]:
        """Block boundaries noted so far, with the state a restarted encoder needs."""
        return [RestartPoint(*point) for point in self._deflater.restart_points()]
