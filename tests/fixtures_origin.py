"""Origin fixtures shared by the suite (see tests/conftest.py).

Every origin test used to build its own app the same way; here it is built
once: ``start_origin(**settings)`` runs an origin on loopback with its data
under the test's ``tmp_path / "origin"`` (settings are ``OriginConfig``
fields), ``origin_server`` is one with the defaults, ``origin_client`` a
client of it. ``digest_of`` and ``error_code`` are the two helpers every
origin test wrote for itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from krill.clock import SYSTEM_CLOCK, Clock
from krill.digests import Digest
from krill.origin.config import OriginConfig
from krill.origin.server import create_app

__all__ = [
    "StartOrigin",
    "digest_of",
    "error_code",
    "origin_client",
    "origin_server",
    "start_origin",
]


class StartOrigin(Protocol):
    async def __call__(self, *, clock: Clock = SYSTEM_CLOCK, **settings: Any) -> TestServer: ...


@pytest.fixture
def start_origin(tmp_path: Path, aiohttp_server: AiohttpServer) -> StartOrigin:
    """Start an origin app (``OriginConfig`` fields as keywords; data in tmp_path/origin).

    ``clock`` (e.g. a ``tests.clocks.ManualClock``) times what ``create_app`` lets a clock time.
    """

    async def start(*, clock: Clock = SYSTEM_CLOCK, **settings: Any) -> TestServer:
        config = OriginConfig(data=tmp_path / "origin", **settings)
        return await aiohttp_server(create_app(config, clock=clock))

    return start


@pytest.fixture
async def origin_server(start_origin: StartOrigin) -> TestServer:
    """An origin with the default settings (deltas on, no upstream, no tracker)."""
    return await start_origin()


@pytest.fixture
async def origin_client(origin_server: TestServer, aiohttp_client: AiohttpClient) -> TestClient:
    return await aiohttp_client(origin_server)


def digest_of(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``, as the registry API names a blob."""
    return str(Digest.of_bytes(data))


async def error_code(resp: ClientResponse) -> str:
    """The spec error code of an error answer (its first error)."""
    code: str = (await resp.json())["errors"][0]["code"]
    return code
