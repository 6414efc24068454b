"""Start writing a growing file's data to disk early, so the fsync at the end is short.

A durable swarm download (``SwarmSettings.durable_downloads``; the agent's
cache skips the fsync, and this with it) is fsynced before it is published.
Left to the kernel, all of it is still in the page cache when the last piece
arrives, and that fsync writes the whole blob while the pull waits: 0.14-0.27 s
per 64 MiB node in the herd benchmark, where 16 nodes share one disk. Asking for
writeback while the download runs (Linux ``sync_file_range``, which only
queues the writes) leaves the fsync the last few pieces. Elsewhere it does
nothing, and the fsync does it all as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages, do not wait


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def start_writeback(path: Path, end: int) -> None:
    """Queue the dirty pages of the file's first ``end`` bytes for writing, without waiting.

    Only for bytes nobody writes any more: writing into pages under writeback
    costs the writer (in the herd benchmark, the whole file's writeback more
    than doubled the CPU spent copying pieces into the page cache).

    Blocking only if the disk's queue is full: call it off the event loop. Only
    a hint: failures are ignored, the final fsync still makes the file durable.
    """
    if _sync_file_range is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        _sync_file_range(fd, 0, end, _SYNC_FILE_RANGE_WRITE)
    finally:
        os.close(fd)
