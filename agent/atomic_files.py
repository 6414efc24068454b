"""Replacing a small file so a crash leaves either the old or the new content, never half.

The agent's indexes (``index.json``, ``layers.json``) and the ``hosts.toml``
files it writes for containerd all go through ``write_atomically``: write a
temporary file beside the target, fsync it, rename it over the target, fsync
the directory (so the rename itself survives a power cut).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8), durably. Blocking: run it off the event loop."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
