"""Agent and tracker fixtures shared by the suite (see tests/conftest.py).

* ``http``: an aiohttp client session for the test's own requests.
* ``redis_url``: an empty database on a real redis-server. One server runs for
  the whole session (starting one takes a noticeable part of a second) and is
  flushed before each test, so tests never see each other's swarms.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import redis

from tests.components import redis_server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """The shared redis-server's database, emptied for this test."""
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server_url
