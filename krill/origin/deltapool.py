"""The delta engine's worker processes: a pool that outlives a worker's death.

A worker process that dies (say the kernel's OOM killer ends it while it
diffs a huge layer) breaks a ``ProcessPoolExecutor`` for good: every later
submit raises ``BrokenProcessPool``. ``WorkerPool`` then starts a fresh
executor, so one bad layer does not end delta computation for the origin's
lifetime. Workers are spawned, not forked: the origin's event loop, threads
and sockets must not be copied into them.

A worker dies with its origin (``PR_SET_PDEATHSIG``). Otherwise an origin
that is SIGKILLed or OOM-killed leaves its idle workers waiting on their
job queue forever, each holding its memory, and a busy one finishes a delta
nobody will publish. ``tests/test_faults_origin_delta.py`` found this.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

__all__ = ["WorkerPool"]

log = logging.getLogger(__name__)

T = TypeVar("T")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """Worker initializer: have the kernel SIGKILL this process when ``parent`` dies.

    The request is tied to the thread that started the worker; the pool starts
    workers from the thread that submits jobs, the origin's event loop thread,
    which lives as long as the origin does.
    """
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            log.warning("delta.worker_pdeathsig_failed errno=%d", ctypes.get_errno())
    if os.getppid() != parent:  # the origin died before the request took effect
        os._exit(1)


class WorkerPool:
    """``workers`` spawned processes, replaced as a whole when one of them dies."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def start(self) -> None:
        self._executor = self._new_executor()

    @property
    def running(self) -> bool:
        return self._executor is not None

    @property
    def executor(self) -> ProcessPoolExecutor:
        """The current executor (a new one after a worker died)."""
        if self._executor is None:
            raise RuntimeError("the delta engine is not running")
        return self._executor

    async def run(self, job: Callable[..., T], *args: object) -> T:
        """Run ``job`` in a worker; a dead worker gets the pool replaced.

        A pool already broken when the job is submitted (a worker died while
        idle) is replaced and the job goes to the new one; a job whose worker
        died under it fails (running it again would likely kill again).
        """
        for attempt in range(2):
            executor = self.executor
            try:
                future = executor.submit(job, *args)
            except BrokenProcessPool:
                self._replace(executor, job)
                if attempt == 0:
                    continue
                raise
            try:
                return await asyncio.wrap_future(future)
            except BrokenProcessPool:
                self._replace(executor, job)
                raise
        raise AssertionError("unreachable")

    def _replace(self, broken: ProcessPoolExecutor, job: Callable[..., object]) -> None:
        if self._executor is broken:  # the first to notice replaces it
            log.error("delta.worker_died job=%s (starting a new pool)", job.__name__)
            self._executor = self._new_executor()
            broken.shutdown(wait=False, cancel_futures=True)

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        )

    async def close(self) -> None:
        """Stop the workers, waiting for a running job without blocking the event loop."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
