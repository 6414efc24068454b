"""The sha256 of a file's first bytes, kept up to date while the rest is still arriving.

A blob fetched through the swarm must match its digest before anyone sees it.
Hashing it only once its last piece is in costs the whole hash at the very end
of every pull: 64 MiB is ~35 ms of one CPU on its own, and when a herd of nodes
finishes at once on a busy machine it was 0.1-0.6 s per node, a tenth of the
herd benchmark's pull. So the swarm engine hashes the prefix known to be in
the file as it grows, and publishing hashes only what came after. Pieces do
not arrive in order (the origin hands out claims front to back, but peers
pick the rarest first, so old, common pieces come last): 70-95 % of a blob
was hashed early in the herd benchmark.

The prefix is a shortcut, never the verdict: ``BlobStore.adopt_file`` hashes
the rest of the file itself, and hashes the whole file again before it calls a
blob corrupt.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_READ_SIZE = 1 << 20  # one buffer, reused: reading a 1 GiB blob allocates 1 MiB


class PrefixDigest:
    """sha256 of ``path``'s bytes ``[0, offset)``; ``advance`` hashes more of them.

    Not thread-safe: one caller advances it at a time (the swarm engine's digest
    task, in a worker thread), and readers look only after that caller is done.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hasher = hashlib.sha256()
        self.offset = 0

    def copy(self) -> PrefixDigest:
        """An independent digest of the same prefix, to finish without touching this one."""
        twin = PrefixDigest(self.path)
        twin.hasher, twin.offset = self.hasher.copy(), self.offset
        return twin

    def advance(self, end: int) -> None:
        """Hash the file's bytes from ``offset`` up to ``end`` (blocking: call it in a thread).

        Stops early, without error, where the file ends: whoever finishes the
        digest reads the file again from ``offset`` and sees it is short.
        """
        if end <= self.offset:
            return
        buffer = bytearray(min(_READ_SIZE, end - self.offset))
        view = memoryview(buffer)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset)
            while self.offset < end:
                read = f.readinto(view[: min(len(buffer), end - self.offset)])
                if not read:
                    return
                self.hasher.update(view[:read])
                self.offset += read
