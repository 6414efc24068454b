"""A service's data directory: created, checked writable, and held by one process.

Two agents (or two origins) on one ``--data`` directory would each keep their
own index of the same files and evict, adopt and rewrite them under the
other's feet. So a serving process holds an exclusive ``flock`` on
``<data>/.krill.lock`` for as long as it runs; the kernel drops it when the
process ends, however it ends, so a crashed service never leaves a stale lock.

A second process waits ``wait`` seconds for the lock before it gives up: a
restart that overlaps its predecessor's shutdown (a DaemonSet pod replaced on
the same hostPath) then starts as soon as the old one is gone, and an operator
who started two agents on one directory gets one line saying which process
holds it.

Tools that work beside a running service (``krill origin gc``) do not take it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from krill.clierror import ConfigError

__all__ = ["LOCK_NAME", "DataDirLock", "hold_data_dir"]

log = logging.getLogger(__name__)

LOCK_NAME = ".krill.lock"
_POLL_SECONDS = 0.1


class DataDirLock:
    """The held lock; ``release`` (or the process's end) lets the next process in."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def hold_data_dir(
    path: Path,
    service: str,
    wait: float = 10.0,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> DataDirLock:
    """Create ``path`` if need be and lock it for this process, or raise ConfigError.

    ``service`` names this process in the messages ("agent", "origin"). The lock
    file holds the holder's pid and host name (a pod's name, in a container, where
    the pid alone may read 1), so the message for a busy directory names them.
    """
    lock_path = path / LOCK_NAME
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError(
            f"cannot use data directory {path}: {exc.strerror or exc}; the {service} needs "
            "a directory it can create and write (--data)"
        ) from None
    deadline = monotonic() + wait
    warned = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise ConfigError(f"cannot lock {lock_path}: {exc.strerror or exc}") from None
        holder = _holder(fd)
        if monotonic() >= deadline:
            os.close(fd)
            raise ConfigError(
                f"data directory {path} is in use by another krill process ({holder}); "
                f"give each {service} its own --data directory"
            )
        if not warned:
            log.warning("datadir.busy path=%s holder=%r waiting=%.0fs", path, holder, wait)
            warned = True
        sleep(_POLL_SECONDS)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return DataDirLock(path, fd)


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it ("pid 12 on node-a"), or "pid unknown"
    (it may be writing it right now)."""
    pid, _, host = os.pread(fd, 300, 0).decode(errors="replace").strip().partition(" ")
    if not pid.isdigit():
        return "pid unknown"
    return f"pid {pid} on {host}" if host else f"pid {pid}"
