"""Where a rebuilt tar goes: hashed, recompressed by the recipe, hashed again, written.

Both digests (the tar's diff_id, the blob's digest) are taken on the way, so
checking a rebuilt layer costs no second read. The blob written is bounded
by the size the delta's header declares: a crafted delta whose ops rebuild
more cannot fill the disk before the final check would refuse it.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO

from krill.delta.format import DeltaFormatError
from krill.delta.recipes import Compressor
from krill.digests import Digest

__all__ = ["LayerSink"]


class LayerSink:
    """Tar bytes in; hashes the tar, recompresses, hashes and writes the blob."""

    def __init__(
        self, dst: BinaryIO, compressor: Compressor, *, identity: bool, max_size: int
    ) -> None:
        self._dst = dst
        self._max_size = max_size
        self._compressor = compressor
        self._tar_hash = hashlib.sha256()
        # An uncompressed layer's blob is its tar: one hash serves as both digests.
        self._blob_hash = self._tar_hash if identity else hashlib.sha256()
        self._identity = identity
        self.tar_size = 0
        self.size = 0

    def write(self, data: bytes) -> None:
        self._tar_hash.update(data)
        self.tar_size += len(data)
        self._emit(self._compressor.feed(data))

    def finish(self) -> None:
        self._emit(self._compressor.finish())

    def _emit(self, blob: bytes) -> None:
        """Write blob bytes, never more than the header declares (a crafted delta fills no disk)."""
        if blob:
            if self.size + len(blob) > self._max_size:
                raise DeltaFormatError(
                    f"rebuilt layer grows past the {self._max_size} bytes the delta's header "
                    f"declares (target.size): the delta is corrupt or crafted"
                )
            if not self._identity:
                self._blob_hash.update(blob)
            self.size += len(blob)
            self._dst.write(blob)

    def diff_id(self) -> str:
        return str(Digest.from_hasher(self._tar_hash))

    def digest(self) -> str:
        return str(Digest.from_hasher(self._blob_hash))
