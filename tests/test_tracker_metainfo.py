"""The tracker's metainfo endpoint against misbehaving origins: hung, hostile, failing, busy."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest
from aiohttp import web

from krill import bencode
from krill.config import ConfigError
from krill.digests import Digest
from krill.endpoints import METAINFO
from krill.metainfo import MIN_PIECE_LENGTH
from krill.originclient import fetch_metainfo
from krill.tracker.config import TrackerConfig
from krill.tracker.server import create_app
from tests.components import free_port
from tests.polling import until
from tests.swarm_helpers import running_tracker, serving

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def metainfo_for(data: bytes) -> tuple[Digest, bytes]:
    digest = Digest.of_bytes(data)
    info = {
        "length": len(data), "name": digest.hex, "piece length": MIN_PIECE_LENGTH,
        "pieces": hashlib.sha1(data).digest(),
    }
    return digest, bencode.encode({"info": info})


@contextlib.asynccontextmanager
async def origin(handler: Handler) -> AsyncIterator[tuple[str, list[str]]]:
    """A stand-in origin serving ``handler`` on loopback; yields (base URL, paths asked for)."""
    asked: list[str] = []

    async def counting(request: web.Request) -> web.StreamResponse:
        asked.append(request.match_info["digest"])
        return await handler(request)

    app = web.Application()
    app.router.add_get(METAINFO.route, counting)
    async with serving(app) as base:
        yield base, asked


def serving_documents(documents: dict[str, bytes]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        body = documents.get(request.match_info["digest"])
        if body is None:
            return web.Response(status=404, text="no such blob here")
        return web.Response(body=body)

    return handler


@contextlib.contextmanager
def hung_origin() -> Iterator[str]:
    """Accepts TCP connections (the kernel does) but never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


async def test_a_hung_origin_is_given_up_and_the_next_one_asked(
    http: aiohttp.ClientSession,
) -> None:
    digest, metainfo = metainfo_for(b"blob one")
    with hung_origin() as hung:
        async with (
            origin(serving_documents({str(digest): metainfo})) as (good, asked),
            running_tracker(origin=[hung, good], metainfo_timeout=2.0) as tracker,
        ):
            # Far below the old 120 s per origin; a hang here fails instead of stalling the suite.
            async with asyncio.timeout(30):
                assert await fetch_metainfo(http, tracker, digest) == metainfo
            assert asked == [str(digest)]


async def test_the_origin_that_answered_last_is_asked_first(
    http: aiohttp.ClientSession,
) -> None:
    digest, metainfo = metainfo_for(b"blob one")
    other, other_metainfo = metainfo_for(b"blob two")
    async with (
        origin(serving_documents({})) as (empty, empty_asked),
        origin(serving_documents({str(digest): metainfo, str(other): other_metainfo}))
        as (full, full_asked),
        running_tracker(origin=[empty, full]) as tracker,
    ):
        assert await fetch_metainfo(http, tracker, digest) == metainfo
        assert empty_asked == [str(digest)] and full_asked == [str(digest)]
        assert await fetch_metainfo(http, tracker, other) == other_metainfo
        assert empty_asked == [str(digest)], "the origin that lacked the last blob was asked first"
        assert full_asked == [str(digest), str(other)]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"l" * 300_000 + b"e" * 300_000),  # was a RecursionError: a 500, origin 2 unasked
        (500, b"origin is broken"),
        (200, b"<html>not a torrent</html>"),
    ],
    ids=["deeply-nested", "server-error", "not-bencoded"],
)
async def test_a_failing_origin_is_skipped_for_the_next(
    http: aiohttp.ClientSession, status: int, body: bytes
) -> None:
    digest, metainfo = metainfo_for(b"blob")

    async def bad(request: web.Request) -> web.Response:
        return web.Response(body=body, status=status)

    async with (
        origin(bad) as (broken, broken_asked),
        origin(serving_documents({str(digest): metainfo})) as (good, good_asked),
        running_tracker(origin=[broken, good]) as tracker,
    ):
        assert await fetch_metainfo(http, tracker, digest) == metainfo
        assert broken_asked == good_asked == [str(digest)]


async def test_when_every_origin_fails_the_answer_says_why(http: aiohttp.ClientSession) -> None:
    digest, _ = metainfo_for(b"blob")

    async def nested(request: web.Request) -> web.Response:
        return web.Response(body=b"l" * 100_000 + b"e" * 100_000)

    async with origin(nested) as (broken, _), running_tracker(origin=[broken]) as tracker:
        async with http.get(METAINFO.url(tracker, digest)) as answer:
            # 503, not 404: the blob may exist; its origin gave no usable answer.
            assert answer.status == 503
            assert "nested deeper" in await answer.text()


async def test_an_origin_that_is_down_gets_503_not_404(http: aiohttp.ClientSession) -> None:
    digest, _ = metainfo_for(b"blob")
    down = f"http://127.0.0.1:{free_port()}"
    async with running_tracker(origin=[down]) as tracker:
        async with http.get(METAINFO.url(tracker, digest)) as answer:
            assert answer.status == 503
            assert down in await answer.text()


async def test_concurrent_requests_share_one_origin_fetch(http: aiohttp.ClientSession) -> None:
    digest, metainfo = metainfo_for(b"popular blob")
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(body=metainfo)

    async with origin(slow) as (base, asked), counting_tracker([base]) as (tracker, seen):
        herd = [asyncio.create_task(fetch_metainfo(http, tracker, digest)) for _ in range(8)]
        async with asyncio.timeout(30):
            await arrived.wait()
        # A request the tracker has seen has joined the fetch: nothing in between yields.
        await until(lambda: len(seen) == 8, "the whole herd to reach the tracker")
        release.set()
        assert await asyncio.gather(*herd) == [metainfo] * 8
        assert asked == [str(digest)]


@contextlib.asynccontextmanager
async def counting_tracker(origins: list[str]) -> AsyncIterator[tuple[str, list[str]]]:
    """A tracker on loopback; yields (base URL, the paths of the requests it has begun)."""
    seen: list[str] = []

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.append(request.path)
        return await handler(request)

    app = create_app(TrackerConfig(listen="127.0.0.1:0", origin=origins))
    app.middlewares.append(count)
    async with serving(app) as base:
        yield base, seen


@pytest.mark.parametrize("name", ["metainfo_cache_entries", "metainfo_timeout"])
@pytest.mark.parametrize("value", [0, -1])
def test_metainfo_settings_must_be_positive(name: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"{name} must be positive"):
        TrackerConfig(**{name: value})  # type: ignore[arg-type]  # one setting, by name
