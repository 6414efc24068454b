"""A body read in batches for one thread hop each: the origin's write path, shared.

An upload into the store and a pull-through fill from upstream both write
(and hash) on a worker thread, off the event loop. One thread hop per
network chunk would cost more than the write, so chunks are gathered: a
batch ends at ``batch_bytes`` while the sender is faster than the disk, or
as soon as nothing more is buffered, so a slow sender's bytes are not held
back waiting for a batch to fill (pull-through clients stream them at once).

from __future__ import annotations

A sender that goes quiet is given up on after ``idle`` seconds without a
byte (``BodyIdle``): an upload body that stops arriving would otherwise hold
its connection, file and descriptor forever (nginx's ``client_body_timeout``
is the same idea, 60 s by default).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

from krill.clock import SYSTEM_CLOCK, Clock, timeout

__all__ = ["Batches", "BodyIdle"]


class BodyIdle(Exception):
    """No byte of the body arrived for ``idle`` seconds."""


class Batches:
    """``body``'s chunks gathered into lists to write at once; ``received`` counts bytes read."""

    def __init__(
        self,
        body: aiohttp.StreamReader,
        read_chunk: int,
        batch_bytes: int,
        *,
        idle: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.body = body
        self.read_chunk = read_chunk
        self.batch_bytes = batch_bytes
        self.idle = idle
        self.clock = clock
        self.received = 0

    async def _chunks(self) -> AsyncIterator[bytes]:
        """The body's chunks; BodyIdle when one takes longer than ``idle``."""
        if self.idle is None:
            async for chunk in self.body.iter_chunked(self.read_chunk):
                yield chunk
            return
        while True:
            try:
                async with timeout(self.clock, self.idle):
                    chunk = await self.body.read(self.read_chunk)
            except TimeoutError:
                raise BodyIdle(f"no byte for {self.idle:g} s") from None
            if not chunk:
                return
            yield chunk

    async def __aiter__(self) -> AsyncIterator[list[bytes]]:
        batch: list[bytes] = []
        pending = 0
        async for chunk in self._chunks():
            batch.append(chunk)
            pending += len(chunk)
            self.received += len(chunk)
            caught_up = self.body.total_bytes <= self.received  # nothing more buffered yet
            if pending >= self.batch_bytes or caught_up:
                yield batch
                batch, pending = [], 0
        if batch:
            yield batch
