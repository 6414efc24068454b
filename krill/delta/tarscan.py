"""Split a tar archive into the exact byte ranges that make it up.

The delta codec rebuilds a tar byte for byte, so it never re-serialises a
header: it only needs to know *where* each member's content lies. Everything
else (ustar/GNU/PAX headers, long-name records, sparse maps, padding, the
end-of-archive blocks and anything after them) is "meta" and is carried
verbatim. The scanner is a hint for the encoder: if it misreads an archive,
the delta only gets bigger, never wrong, because every byte of the target
is still covered exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

log = logging.getLogger(__name__)

BLOCK = 512
# Types after which no content follows, whatever the size field says (as tarfile reads them).
_NO_DATA_TYPES = frozenset(b"123456")
# Records whose content describes the next member: carried as meta, never as a file.
_META_TYPES = frozenset(b"xgLKX")
_GNU_SPARSE = ord("S")
# A PAX record set larger than this is not trusted for a size override.
_MAX_PAX_BYTES = 16 << 20


class TarScanError(ValueError):
    """The bytes stop looking like a tar archive at some offset."""


@dataclass(frozen=True, slots=True)
class Member:
    """One archive member's content: ``size`` bytes at ``offset``; ``name`` as stored."""

    name: str
    offset: int
    size: int
    typeflag: int


@dataclass(frozen=True, slots=True)
class Layout:
    """A tar split into content ranges (members) and the total size; the rest is meta."""

    members: list[Member]
    total_size: int


def _parse_number(field: bytes) -> int:
    """A ustar numeric field: octal text, or GNU base-256 when the top bit is set."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:  # negative base-256: never a valid size
            raise TarScanError("negative base-256 number")
        return value | ((field[0] & 0x7F) << (8 * (len(field) - 1)))
    text = field.split(b"\0", 1)[0].strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError as exc:
        raise TarScanError(f"bad octal field {field!r}") from exc


def _checksum_ok(block: bytes) -> bool:
    """POSIX sums bytes unsigned; some old tars summed them signed (only tried on a mismatch)."""
    stored = _parse_number(block[148:156])
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored == unsigned:
        return True
    high = block[:148] + block[156:]
    return stored == unsigned - 2 * sum(b for b in high if b > 127)


def _header_name(block: bytes) -> str:
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar" and block[345] != 0 and block[263:265] != b" \0":
        name = block[345:500].split(b"\0", 1)[0] + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, bytes]:
    """Parse ``"%d %s=%s\\n"`` records; a malformed set yields what parsed so far."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 24)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            break
        if length <= 0 or pos + length > len(data):
            break
        record = data[space + 1 : pos + length - 1]
        key, eq, value = record.partition(b"=")
        if eq:
            records[key.decode("utf-8", "replace")] = value
        pos += length
    return records


def _read_exact(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise TarScanError(f"archive truncated at offset {offset}")
    return data


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def iter_members(f: BinaryIO, total_size: int) -> Iterator[Member]:
    """Yield each member with content, in archive order; stop at end-of-archive.

    Raises TarScanError where the archive stops parsing; callers treat the
    remaining bytes as opaque.
    """
    pos = 0
    pending_name: str | None = None
    pending_size: int | None = None
    while pos + BLOCK <= total_size:
        block = _read_exact(f, pos, BLOCK)
        if block == bytes(BLOCK):
            return  # end-of-archive: the rest is meta
        if not _checksum_ok(block):
            raise TarScanError(f"bad header checksum at offset {pos}")
        typeflag = block[156]
        size = _parse_number(block[124:136])
        header_end = pos + BLOCK
        if typeflag == _GNU_SPARSE and block[482]:
            header_end = _skip_sparse_extensions(f, header_end, total_size)
        if typeflag in _META_TYPES:
            if size > _MAX_PAX_BYTES:
                raise TarScanError(f"extended header of {size} bytes at offset {pos}")
            data = _read_exact(f, header_end, size)
            if typeflag == ord("x"):
                records = _pax_records(data)
                if "size" in records:
                    pending_size = _int_or_none(records["size"])
                if "path" in records:
                    pending_name = records["path"].decode("utf-8", "surrogateescape")
            elif typeflag == ord("L"):
                pending_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            pos = header_end + _padded(size)
            continue
        if pending_size is not None:
            size = pending_size
        name = pending_name if pending_name is not None else _header_name(block)
        pending_name = pending_size = None
        if typeflag in _NO_DATA_TYPES:
            size = 0
        if header_end + size > total_size:
            raise TarScanError(f"member {name!r} runs past the end of the archive")
        if size:
            yield Member(name, header_end, size, typeflag)
        pos = header_end + _padded(size)


def _skip_sparse_extensions(f: BinaryIO, pos: int, total_size: int) -> int:
    """Old GNU sparse headers chain 512-byte extension blocks; return where data starts."""
    while True:
        if pos + BLOCK > total_size:
            raise TarScanError("sparse extension header runs past the end of the archive")
        ext = _read_exact(f, pos, BLOCK)
        pos += BLOCK
        if not ext[504]:
            return pos


def _int_or_none(value: bytes) -> int | None:
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number >= 0 else None


def _members_until_unparsable(f: BinaryIO, total_size: int) -> Iterator[Member]:
    """iter_members, ending quietly where the archive stops parsing (the rest is meta)."""
    count = 0
    try:
        for member in iter_members(f, total_size):
            count += 1
            yield member
    except TarScanError as exc:
        log.info("delta.tarscan.stopped reason=%s members=%d", exc, count)


def scan(f: BinaryIO, total_size: int) -> Layout:
    """All content ranges of the archive; a parse failure ends the list (rest is meta)."""
    return Layout(list(_members_until_unparsable(f, total_size)), total_size)


def bulk_members(layout: Layout, small_file_limit: int) -> list[Member]:
    """Members whose content is coded on its own; smaller ones travel in the meta stream."""
    return [m for m in layout.members if m.size > small_file_limit]


def meta_ranges(layout: Layout, small_file_limit: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of every byte outside bulk content, in order: the meta stream."""
    return _meta_ranges_of(layout.members, layout.total_size, small_file_limit)


def _meta_ranges_of(
    members: Iterable[Member], total_size: int, small_file_limit: int
) -> Iterator[tuple[int, int]]:
    pos = 0
    for member in members:
        if member.size <= small_file_limit:
            continue
        if member.offset > pos:
            yield pos, member.offset - pos
        pos = member.offset + member.size
    if total_size > pos:
        yield pos, total_size - pos


def read_meta_prefix(f: BinaryIO, layout: Layout, small_file_limit: int, cap: int) -> bytes:
    """The first ``cap`` bytes of the archive's meta stream (the base side's zstd prefix)."""
    return _read_prefix(f, meta_ranges(layout, small_file_limit), cap)


def scan_meta_prefix(f: BinaryIO, total_size: int, small_file_limit: int, cap: int) -> bytes:
    """``read_meta_prefix(f, scan(f, total_size), ...)``, scanning only as far as ``cap`` needs.

    The applier needs only the first ``cap`` (<= 32 MiB) meta bytes of the
    base; scanning every header of a 100k-file layer costs about a second on
    the critical path, so members are read lazily and the scan stops as soon
    as the meta bytes known so far (everything outside bulk content) reach
    the cap.
    """
    parts: list[bytes] = []
    pos = 0  # meta bytes before pos are in parts; bytes from pos to the next bulk member are meta
    left = cap
    for member in _members_until_unparsable(f, total_size):
        if left <= 0:
            break
        if member.size > small_file_limit:
            take = min(member.offset - pos, left)
            if take > 0:
                parts.append(_read_exact(f, pos, take))
                left -= take
            pos = member.offset + member.size
        elif member.offset + member.size - pos >= left:
            break  # a small file's content is meta too: the cap is reached inside it
    take = min(total_size - pos, left)
    if take > 0:
        parts.append(_read_exact(f, pos, take))
    return b"".join(parts)


def _read_prefix(f: BinaryIO, ranges: Iterator[tuple[int, int]], cap: int) -> bytes:
    parts: list[bytes] = []
    left = cap
    for offset, length in ranges:
        take = min(length, left)
        parts.append(_read_exact(f, offset, take))
        left -= take
        if left <= 0:
            break
    return b"".join(parts)
