"""HDiffPatch as the delta's binary-diff engine (OP_HDIFF).

bsdiff4 spends most of an encode in its suffix sort (qsufsort) and leaves a
file-sized diff block that zstd's top levels then crawl over. HDiffPatch
(``hdiffpatch`` on PyPI, sisong/HDiffPatch underneath: divsufsort, covers
with RLE-coded differences) made the same binaries 4-6x faster and mostly
smaller (numbers in docs/deltas.md). The encoder asks it for an
*uncompressed* diff (format ``HDIFF13`` with no compressor) and wraps that in
one zstd frame of our own, so the applier decodes it with the same bounded
zstd code as every other op and reads only plain bytes whose header has been
checked against the op (sizes of old, new, and every section), never a
compressed stream it would size itself. Nodes apply the diff with our own C
(krill/_native/hdiffapply.c: twice as fast as the binding's apply, and no
25 ms import); only origins load the binding, to make diffs.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from krill.delta.goflatemod import load_goflate

MAGIC = b"HDIFF13&\x00"  # version type, '&', empty compressor name, NUL
_SECTIONS = 4  # covers, RLE control, RLE codes, new data not covered


class HDiffError(ValueError):
    """An HDIFF13 diff that does not fit the op that carries it."""


@dataclass(frozen=True, slots=True)
class HDiffHeader:
    new_size: int
    old_size: int
    cover_count: int
    sections: tuple[int, ...]  # uncompressed sizes of the 4 sections
    header_len: int


def diff(old: bytes, new: bytes) -> bytes:
    """An uncompressed HDIFF13 diff rebuilding ``new`` from ``old`` (origins only)."""
    # Imported here: the binding (a 38 MB extension, the attrs package under it) is ~25 ms
    # of CPU with the GIL held, and nodes, which only patch, never load it.
    import hdiffpatch

    return hdiffpatch.diff(old, new, "none", validate=False)


def patch(old: bytes, raw: bytes, new_size: int) -> bytes:
    """Rebuild ``new_size`` bytes from ``old`` and a checked uncompressed HDIFF13 diff.

    Applied by our own C (``krill._goflate.hdiff_apply``, krill/_native/hdiffapply.c),
    which refuses any diff whose sections do not add up exactly to the two files.
    """
    header = parse_header(raw)
    if header.new_size != new_size or header.old_size != len(old):
        raise HDiffError("hdiff diff was made for other sizes than its op declares")
    try:
        out: bytes = _native().hdiff_apply(
            old, memoryview(raw)[header.header_len :], header.sections, header.cover_count, new_size
        )
    except ValueError as exc:
        raise HDiffError(f"corrupt hdiff diff: {exc}") from exc
    return out


def _native() -> ModuleType:
    return load_goflate(HDiffError, "apply deltas with binary-diff ops")


def parse_header(raw: bytes) -> HDiffHeader:
    """The HDIFF13 header, refusing compressed sections and sizes that overrun ``raw``."""
    if not raw.startswith(MAGIC):
        raise HDiffError("not an uncompressed HDIFF13 diff")
    pos = len(MAGIC)
    values = []
    for _ in range(3 + 2 * _SECTIONS):
        value, pos = _unpack_uint(raw, pos)
        values.append(value)
    new_size, old_size, cover_count, *pairs = values
    sections = tuple(pairs[0::2])
    if any(pairs[1::2]):
        raise HDiffError("hdiff diff has compressed sections (only plain ones are accepted)")
    if pos + sum(sections) != len(raw):
        raise HDiffError("hdiff diff sections do not add up to its length")
    return HDiffHeader(new_size, old_size, cover_count, sections, pos)


def _unpack_uint(buf: bytes, pos: int) -> tuple[int, int]:
    """HDiffPatch's packed unsigned integer: 7 bits a byte, high bit = more follow."""
    value = 0
    for _ in range(10):
        if pos >= len(buf):
            raise HDiffError("hdiff diff truncated in its header")
        code = buf[pos]
        pos += 1
        value = (value << 7) | (code & 0x7F)
        if not code & 0x80:
            return value, pos
    raise HDiffError("hdiff diff header has an integer over 64 bits")
