"""Layer blobs as seekable tars: decompress once to a temp file, hashing on the way.

Both sides of the codec read tars by offset (the encoder to pair files, the
applier to copy base ranges), so a compressed blob is expanded to a file
beside the work rather than into memory.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from krill.delta.recipes import blob_kind, iter_tar_chunks
from krill.digests import Digest


@dataclass(frozen=True, slots=True)
class TarFile:
    """An uncompressed tar on disk; ``temporary`` when we made it and must delete it."""

    path: Path
    diff_id: str
    size: int
    temporary: bool

    def discard(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


def materialize_tar(blob: Path, work_dir: Path) -> TarFile:
    """The blob's uncompressed tar and its digest; plain tars are used in place."""
    hasher = hashlib.sha256()
    size = 0
    if blob_kind(blob) == "tar":
        for chunk in iter_tar_chunks(blob):
            hasher.update(chunk)
            size += len(chunk)
        return TarFile(blob, str(Digest.from_hasher(hasher)), size, temporary=False)
    fd, name = tempfile.mkstemp(prefix=".krill-tar-", suffix=".tmp", dir=work_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in iter_tar_chunks(blob):
                hasher.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return TarFile(path, str(Digest.from_hasher(hasher)), size, temporary=True)


def window_log_for(size: int) -> int:
    """The zstd window that covers ``size`` bytes (shared by encoder and decoder limits)."""
    return min(30, max(10, (max(size, 1) - 1).bit_length()))
