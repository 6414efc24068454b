"""Which base file a target file is coded against.

A target file whose content the base already holds is a COPY; otherwise the
encoder wants the base file most likely to resemble it, as the prefix of a
zstd frame or the old side of a binary diff. Renames in real layers are
mostly version or hash changes in a path (``numpy-2.2.5.dist-info``,
``libfoo-56d6093b.so``), so those are matched after exact paths and before
bare file names.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from typing import BinaryIO

from krill.delta.ranges import Range, iter_range, read_range
from krill.delta.tarscan import Member

__all__ = ["BaseIndex", "hash_range", "read_tar_range"]

_VERSIONISH = re.compile(r"[0-9a-f]{7,}|[0-9]+")


def _tar_shrank() -> OSError:
    """The encoder's short read: a tar it made (or was given) changed under it."""
    return OSError("tar shrank while reading")


class BaseIndex:
    """The base's bulk files by content hash, and by name keys from exact to loose."""

    def __init__(self, f: BinaryIO, members: list[Member]) -> None:
        self.by_hash: dict[bytes, Range] = {}
        # Exact path, path without versions/hashes, file name, file name without versions.
        self.by_key: list[dict[str, list[tuple[int, Range]]]] = [{}, {}, {}, {}]
        for m in members:
            rng = Range(m.offset, m.size)
            self.by_hash.setdefault(hash_range(f, rng), rng)
            for table, key in zip(self.by_key, _name_keys(m.name), strict=True):
                table.setdefault(key, []).append((m.size, rng))

    def partner(self, name: str, size: int) -> Range | None:
        """The base file most likely to resemble target file ``name`` (closest size wins)."""
        for table, key in zip(self.by_key, _name_keys(name), strict=True):
            found = table.get(key)
            if found:
                return min(found, key=lambda item: abs(item[0] - size))[1]
        return None


def hash_range(f: BinaryIO, rng: Range) -> bytes:
    """sha256 of a range of a tar the encoder made (read 1 MiB at a time)."""
    hasher = hashlib.sha256()
    for chunk in iter_range(f, rng, _tar_shrank):
        hasher.update(chunk)
    return hasher.digest()


def read_tar_range(f: BinaryIO, rng: Range) -> bytes:
    """A range of a tar the encoder reads, in one buffer."""
    return read_range(f, rng, _tar_shrank)


def _name_keys(name: str) -> tuple[str, str, str, str]:
    path = _norm(name)
    base = posixpath.basename(path)
    return path, _VERSIONISH.sub("#", path), base, _VERSIONISH.sub("#", base)


def _norm(name: str) -> str:
    return name.removeprefix("./").rstrip("/")
