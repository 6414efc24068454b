"""Byte ranges of a tar on disk, read exactly or not at all.

Both sides of the codec address tars by (offset, size): the encoder hashes
and reads member contents, the applier copies and reads base ranges. A short
read means something different to each (the encoder's tar shrank under it;
a delta points past the applier's base), so each passes the error to raise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["CHUNK", "Range", "ShortRead", "iter_range", "read_range"]

CHUNK = 1 << 20

# Makes the exception a short read raises (a fresh one each time: threads read concurrently).
ShortRead = Callable[[], Exception]


@dataclass(frozen=True, slots=True)
class Range:
    """``size`` bytes at ``offset``."""

    offset: int
    size: int


def read_range(f: BinaryIO, rng: Range, short: ShortRead) -> bytes:
    """The range's bytes in one buffer."""
    f.seek(rng.offset)
    data = f.read(rng.size)
    if len(data) != rng.size:
        raise short()
    return data


def iter_range(f: BinaryIO, rng: Range, short: ShortRead, chunk: int = CHUNK) -> Iterator[bytes]:
    """The range's bytes, ``chunk`` at a time (bounded memory whatever its size)."""
    f.seek(rng.offset)
    left = rng.size
    while left:
        data = f.read(min(left, chunk))
        if not data:
            raise short()
        yield data
        left -= len(data)
