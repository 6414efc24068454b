"""A body that arrives in pieces is read whole; an oversized one is refused."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from krill.bodies import BodyTooLarge, read_limited

BODY = bytes(range(256)) * 400  # 102,400 bytes


async def _trickle(request: web.Request) -> web.StreamResponse:
    """Send the body in small pieces with pauses, as a slow network would."""
    response = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
    await response.prepare(request)
    for start in range(0, len(BODY), 7000):
        await response.write(BODY[start : start + 7000])
        await asyncio.sleep(0.001)
    await response.write_eof()
    return response


async def test_fragmented_body_is_read_whole(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_get("/", _trickle)
    client = await aiohttp_client(app)
    async with client.get("/") as response:
        assert await read_limited(response.content, len(BODY), "body") == BODY


async def test_oversized_body_is_refused(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_get("/", _trickle)
    client = await aiohttp_client(app)
    async with client.get("/") as response:
        with pytest.raises(BodyTooLarge):
            await read_limited(response.content, len(BODY) - 1, "body")
    async with client.get("/") as response:
        with pytest.raises(BodyTooLarge, match="limit"):
            await read_limited(
                response.content, 10, "body", declared=response.content_length
            )
