"""Writing a small file so that a crash leaves the old or the new content, never half.

Every piece of metadata a service writes whole (the origin's manifest links,
tags and delta index; the agent's cache index, layer index and containerd
hosts.toml files) goes through ``write_atomic``: the bytes go to a temp file
in the same directory, are fsynced, renamed over the target, and the
directory is fsynced so the rename itself survives a power cut. The blob
store uses ``fsync_dir`` for the same reason after publishing a blob.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (str as UTF-8) durably and atomically.

    Blocking: call it off the event loop.
    """
    if isinstance(data, str):
        data = data.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new name in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
