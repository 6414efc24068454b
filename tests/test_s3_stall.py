"""A store that takes a request and goes silent fails it after two waits, not one per retry.

A paused SeaweedFS (SIGSTOP) held a push ~4 minutes before its 503: four attempts,
each waiting the session's 60 s ``sock_read``. A stall is tried again once (on a
fresh connection: a pooled one a NAT forgot stalls the same way); a dropped
connection or a 5xx is still tried after each delay (``test_origin_s3`` and the
conformance suite cover those).
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from krill.s3client import S3Client, S3Location, S3StalledError, S3UnreachableError
from krill.s3sign import Credentials


async def test_a_silent_store_is_asked_twice_and_a_refusing_one_after_each_delay() -> None:
    asked: list[str] = []
    forever = asyncio.Event()

    async def silent(request: web.Request) -> web.Response:
        asked.append(request.method)
        await forever.wait()  # a store that accepted the request and hangs
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", silent)
    async with TestServer(app, host="127.0.0.1") as server:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=0.2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            location = S3Location(URL(f"http://127.0.0.1:{server.port}"), "layers")
            client = S3Client(location, Credentials("k", "s"), session, retry_delays=(0, 0, 0))
            with pytest.raises(S3StalledError, match="did not answer in time"):
                await client.send("PUT", "blobs/x", body=b"layer")
            assert asked == ["PUT", "PUT"]
        await server.close()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            refused = S3Client(location, Credentials("k", "s"), session, retry_delays=(0, 0))
            with pytest.raises(S3UnreachableError) as caught:
                await refused.send("PUT", "blobs/x", body=b"layer")
            assert not isinstance(caught.value, S3StalledError)
        forever.set()
