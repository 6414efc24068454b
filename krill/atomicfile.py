"""Writing a small file so that a crash leaves the old or the new content, never half.

Every piece of metadata a service writes whole (the origin's manifest links,
tags and delta index; the agent's cache index, layer index and containerd
hosts.toml files) goes through ``write_atomic``: the bytes go to a temp file
in the same directory, are fsynced, renamed over the target, and the
directory is fsynced so the rename itself survives a power cut. The blob
store uses ``fsync_dir`` for the same reason after publishing a blob.
Large outputs streamed whole (a delta, a layer rebuilt from one) go through
``atomic_output``: the same temp-file-then-rename, written as they are made.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_output", "fsync_dir", "write_atomic"]


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


@contextlib.contextmanager
def atomic_output(path: Path, *, prefix: str, suffix: str) -> Iterator[BinaryIO]:
    """A temp file beside ``path`` that replaces it when the block ends without an error.

    The file is named ``prefix…suffix`` (so a sweep can find leftovers),
    fsynced, made readable by all (0644) and renamed over ``path``; when the
    block raises it is deleted and ``path`` is left as it was. Blocking.
    """
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
