"""The agent's serving sends a transfer's verified bytes with sendfile as they arrive.

``krill.agent.serving`` streams a blob still arriving: on plain TCP each run
of bytes its transfer counts as verified goes out with ``krill.sendfile``
(on TLS, ``pread`` + ``write``). These tests drive a transfer by hand (no
timing: each step is an explicit call) behind a real aiohttp server on
loopback, and check that the body is the blob's bytes in order, that
nothing past ``available`` left before the transfer completed (neither read
nor counted as served), and that Range answers are the same slices either
way.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from krill.agent.cache import CacheLimits, NodeCache
from krill.agent.fetcher import InflightBlob
from krill.blobstore import BlobStore
from krill.digests import Digest
from tests.polling import until

SIZE = 3 * (1 << 20) + 12345  # more than one serving chunk, not a multiple of one


class HandDrivenTransfer:
    """A ``Transfer`` whose verified prefix the test moves with ``verify``."""

    def __init__(self, path: Path, size: int) -> None:
        self.size = size
        self.partial_path = path
        self.available = 0
        self.reads_past_available = 0
        self.served = 0
        self.served_past_available = 0
        self._changed = asyncio.Event()
        self._done: asyncio.Future[Path] = asyncio.get_running_loop().create_future()

    def verify(self, upto: int) -> None:
        self.available = upto
        if upto == self.size:
            self._done.set_result(self.partial_path)
        self._changed.set()

    async def wait_available(self, offset: int) -> int:
        while self.available <= offset and not self._done.done():
            self._changed.clear()
            await self._changed.wait()
        return self.available

    async def wait_done(self) -> Path:
        return await asyncio.shield(self._done)

    def cancel(self) -> None:
        pass

    async def read(self, fd: int, offset: int, limit: int) -> bytes:
        if limit > self.available:
            self.reads_past_available += 1
        return os.pread(fd, limit - offset, offset)


@pytest.fixture
def blob_bytes(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(SIZE)
    path = tmp_path / "partial"
    path.write_bytes(data)
    return path, data


@pytest.fixture
async def served(
    tmp_path: Path, blob_bytes: tuple[Path, bytes]
) -> AsyncIterator[tuple[str, HandDrivenTransfer]]:
    from krill.agent.serving import blob_response

    path, data = blob_bytes
    transfer = HandDrivenTransfer(path, len(data))
    blob = InflightBlob(Digest.of_bytes(data), transfer, "swarm")
    cache = NodeCache(BlobStore(tmp_path / "store"), CacheLimits(budget=1 << 30))

    class Metrics:
        def served(self, source: str, count: int) -> None:
            transfer.served += count
            if transfer.served > transfer.available:
                transfer.served_past_available += 1

        def pull_first_byte(self, source: str, seconds: float) -> None: ...
        def pull_done(self, source: str, seconds: float) -> None: ...

    async def handle(request: web.Request) -> web.StreamResponse:
        return await blob_response(request, blob, cache, Metrics())

    app = web.Application()
    app.router.add_get("/blob", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/blob", transfer
    finally:
        await runner.cleanup()


async def read_exactly(response: aiohttp.ClientResponse, count: int) -> bytes:
    return await response.content.readexactly(count)


async def test_stream_then_sendfile_gives_the_blob_in_order(
    served: tuple[str, HandDrivenTransfer], blob_bytes: tuple[Path, bytes]
) -> None:
    url, transfer = served
    _, data = blob_bytes
    half = SIZE // 2
    transfer.verify(half)
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        assert response.content_length == SIZE
        first = await read_exactly(response, half)  # all of it streamed before completion
        transfer.verify(SIZE)  # the whole blob verified: the rest goes with sendfile
        rest = await response.read()
    assert first + rest == data
    assert transfer.reads_past_available == 0
    assert transfer.served_past_available == 0
    # The last run is counted once its sendfile thread hands back to the loop, which
    # can be after the client has read it.
    await until(lambda: transfer.served == SIZE, "the last run counted as served")


async def test_each_verified_step_is_sent_as_it_comes(
    served: tuple[str, HandDrivenTransfer], blob_bytes: tuple[Path, bytes]
) -> None:
    """Small verified steps, each read by the client before the next: every byte is
    sent once, in order, none before it was verified."""
    url, transfer = served
    _, data = blob_bytes
    steps = [1, 70_000, 1 << 20, (1 << 20) + 1, SIZE - 1]
    body = b""
    async with aiohttp.ClientSession() as http:
        transfer.verify(steps[0])
        async with http.get(url) as response:
            for before, upto in zip(steps, [*steps[1:], SIZE], strict=True):
                body += await read_exactly(response, before - len(body))
                transfer.verify(upto)
            body += await response.read()
    assert body == data
    assert transfer.served_past_available == 0
    assert transfer.reads_past_available == 0


async def test_range_after_completion_is_the_same_slice(
    served: tuple[str, HandDrivenTransfer], blob_bytes: tuple[Path, bytes]
) -> None:
    url, transfer = served
    _, data = blob_bytes
    transfer.verify(SIZE)
    start, end = 1000, SIZE - 7
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Range": f"bytes={start}-{end}"}) as response:
            assert response.status == 206
            assert response.headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
            assert await response.read() == data[start : end + 1]
        async with http.get(url) as response:
            assert await response.read() == data
