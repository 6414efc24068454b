"""A body that arrives in pieces is read whole; an oversized one is refused."""

from __future__ import annotations

import asyncio
from collections import deque

import aiohttp
import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from pytest_aiohttp import AiohttpClient

from krill.bodies import BodyTooLarge, read_limited

BODY = bytes(range(256)) * 400  # 102,400 bytes
PIECE = 7000


class _OnePiecePerRead(aiohttp.StreamReader):
    """A body that arrives one piece per read, as over a slow network: ``reads`` counts them."""

    def __init__(self, body: bytes, piece: int) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(BaseProtocol(loop), 1 << 16, loop=loop)
        self._pieces = deque(body[i : i + piece] for i in range(0, len(body), piece))
        self.reads = 0

    async def readany(self) -> bytes:
        self.reads += 1
        if self._pieces:
            self.feed_data(self._pieces.popleft())
        else:
            self.feed_eof()
        return await super().readany()


async def _whole(request: web.Request) -> web.StreamResponse:
    return web.Response(body=BODY)


async def test_fragmented_body_is_read_whole() -> None:
    stream = _OnePiecePerRead(BODY, PIECE)
    assert await read_limited(stream, len(BODY), "body") == BODY
    assert stream.reads > len(BODY) // PIECE, "the body must have arrived in pieces"


async def test_body_passing_the_limit_part_way_is_refused() -> None:
    stream = _OnePiecePerRead(BODY, PIECE)
    with pytest.raises(BodyTooLarge, match="exceeds"):
        await read_limited(stream, len(BODY) - 1, "body")
    assert stream.reads == -(-len(BODY) // PIECE), "refused at the piece that passed the limit"


async def test_oversized_body_is_refused(aiohttp_client: AiohttpClient) -> None:
    app = web.Application()
    app.router.add_get("/", _whole)
    client = await aiohttp_client(app)
    async with client.get("/") as response:
        with pytest.raises(BodyTooLarge):
            await read_limited(response.content, len(BODY) - 1, "body")
    async with client.get("/") as response:
        with pytest.raises(BodyTooLarge, match="limit"):
            await read_limited(response.content, 10, "body", declared=response.content_length)
