"""The swarm keeps a blob while it makes progress, even if its first bytes are late.

A node pulling a whole image asks for every layer at once; one layer's first
verified bytes can then take longer than ``swarm_deadline`` while pieces of
it arrive out of order. ``BlobFetcher`` waits a deadline at a time as long
as each window shows progress (``progress``: pieces verified anywhere), and
falls back only after a window without any. The transfers here are driven
by the test: the window boundaries are the fetcher's own reads of
``progress``, so no step depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from krill.agent.cache import CacheLimits, NodeCache
from krill.agent.fetcher import BlobFetcher, InflightBlob
from krill.agent.sources import SourceUnavailable
from krill.blobstore import BlobStore
from krill.digests import Digest

DEADLINE = 0.02  # seconds per window: short, since each test waits out a few
DIGEST = Digest.of_bytes(b"a layer whose first bytes are late")


class LateFirstBytes:
    """A swarm transfer whose pieces arrive out of order: ``progress`` grows by one
    at each look, and after ``windows`` deadline windows (two looks each) the
    first bytes are available; with ``windows=0`` nothing ever moves."""

    def __init__(self, windows: int, path: Path) -> None:
        self.size = 1 << 20
        self.partial_path = path
        self.available = 0
        self.cancelled = False
        self._windows = windows
        self._looks = 0
        self._first_bytes = asyncio.Event()

    @property
    def progress(self) -> int:
        if not self._windows:
            return 0
        self._looks += 1
        if self._looks >= 2 * self._windows:
            self.available = 1
            self._first_bytes.set()
        return self._looks

    async def wait_available(self, offset: int) -> int:
        await self._first_bytes.wait()
        return self.available

    async def wait_done(self) -> Path:
        await asyncio.Event().wait()
        return self.partial_path

    def cancel(self) -> None:
        self.cancelled = True

    async def read(self, fd: int, offset: int, limit: int) -> bytes:
        raise AssertionError("not read in these tests")


class SwarmOf:
    name = "swarm"

    def __init__(self, transfer: LateFirstBytes) -> None:
        self.transfer = transfer

    async def start(self, digest: Digest, repository: str | None) -> LateFirstBytes:
        return self.transfer


def fetcher_with(tmp_path: Path, transfer: LateFirstBytes) -> BlobFetcher:
    cache = NodeCache(BlobStore(tmp_path / "blobs"), CacheLimits(budget=1 << 30))
    return BlobFetcher(cache, swarm=SwarmOf(transfer), origin=None, swarm_deadline=DEADLINE)


async def test_a_slow_start_with_progress_stays_with_the_swarm(tmp_path: Path) -> None:
    transfer = LateFirstBytes(windows=4, path=tmp_path / "partial")
    fetcher = fetcher_with(tmp_path, transfer)
    blob = await fetcher.open(DIGEST, "library/app")
    assert isinstance(blob, InflightBlob) and blob.source == "swarm"
    assert not transfer.cancelled
    await fetcher.close()


async def test_a_window_without_progress_gives_up_on_the_swarm(tmp_path: Path) -> None:
    transfer = LateFirstBytes(windows=0, path=tmp_path / "partial")
    fetcher = fetcher_with(tmp_path, transfer)
    with pytest.raises(SourceUnavailable, match="swarm"):
        await fetcher.open(DIGEST, "library/app")
    assert transfer.cancelled
    await fetcher.close()
