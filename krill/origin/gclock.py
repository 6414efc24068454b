"""The lock that keeps a garbage collection from deleting what a manifest push relies on.

A manifest PUT checks that the blobs it names are in the store, then links
the manifest; a collection decides a blob is unreferenced, then deletes it.
If the two interleave (check, decide, link, delete) the new manifest names a
deleted blob. So a push holds this lock *shared* from its check to its link,
and the sweep holds it *exclusive* for each batch it deletes, after marking
again from every manifest linked since the collection started: a push then
either finished before the batch (its manifest is marked) or checks after it
(and is told which blobs to push again, ``MANIFEST_BLOB_UNKNOWN``).

It is an ``flock(2)`` on ``DATA/gc.lock`` because ``krill origin gc`` may run
as another process beside the serving origin. Each acquisition opens its own
descriptor: flock locks belong to open file descriptions, so two threads of
one process exclude each other as two processes do. Blocking: call it off the
event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["GcLock"]

LOCK_FILE = "gc.lock"


class GcLock:
    """Shared for manifest pushes, exclusive for a sweep batch."""

    def __init__(self, data: Path) -> None:
        self.path = data / LOCK_FILE

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._locked(fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._locked(fcntl.LOCK_EX):
            yield

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing the last descriptor of the description releases the lock
