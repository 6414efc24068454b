"""Real servers for the swarm tests, run inside the test's event loop on loopback.

``running_tracker`` serves ``tracker.server.create_app``; ``running_origin``
serves a minimal origin app with ``origin.seeding.install_seeding`` (the
metainfo route plus a seeding SwarmEngine), so tests exercise the same code
the origin runs without depending on the rest of the origin server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from krill.blobstore import BlobStore
from krill.origin.seeding import SWARM_ENGINE_KEY, install_seeding
from krill.swarm import SwarmEngine, SwarmSettings
from krill.tracker.config import TrackerConfig
from krill.tracker.server import create_app
from tests.components import free_port

PEER_SCRIPT = Path(__file__).with_name("swarm_peer.py")


@contextlib.asynccontextmanager
async def serving(app: web.Application, port: int | None = None) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1; yields its base URL."""
    port = port or free_port()
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running_tracker(
    port: int | None = None, **settings: object
) -> AsyncIterator[str]:
    """A tracker on loopback; yields its base URL (announce is base + '/announce')."""
    port = port or free_port()
    config = TrackerConfig(listen=f"127.0.0.1:{port}", **settings)  # type: ignore[arg-type]
    async with serving(create_app(config), port) as url:
        yield url


@contextlib.asynccontextmanager
async def running_origin_app(
    store: BlobStore, announce_url: str, port: int | None = None, **settings: object
) -> AsyncIterator[tuple[str, web.Application]]:
    """A minimal origin: metainfo and piece-claim routes + seeding engine. Yields (URL, app)."""
    app = web.Application()
    install_seeding(app, store, SwarmSettings(tracker_url=announce_url, **settings))  # type: ignore[arg-type]
    async with serving(app, port) as url:
        yield url, app


@contextlib.asynccontextmanager
async def running_origin(
    store: BlobStore, announce_url: str, port: int | None = None, **settings: object
) -> AsyncIterator[tuple[str, SwarmEngine]]:
    """``running_origin_app``, yielding (base URL, the origin's swarm engine)."""
    async with running_origin_app(store, announce_url, port, **settings) as (url, app):
        yield url, app[SWARM_ENGINE_KEY]


async def start_peer(data: Path, announce_url: str, metainfo_from: str, digest: str,
                     *extra: str) -> asyncio.subprocess.Process:
    """A swarm peer process (tests/swarm_peer.py); talk to it with ``peer_result``."""
    return await asyncio.create_subprocess_exec(
        sys.executable, str(PEER_SCRIPT), "--data", str(data), "--tracker", announce_url,
        "--metainfo-from", metainfo_from, "--digest", digest, *extra,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )


async def peer_result(peer: asyncio.subprocess.Process, limit: float = 180) -> dict[str, object]:
    """The next JSON line a peer prints (fails the test if it dies first)."""
    assert peer.stdout is not None
    async with asyncio.timeout(limit):
        line = await peer.stdout.readline()
    if not line:
        raise AssertionError(f"swarm peer exited with {await peer.wait()} before answering")
    return json.loads(line)


async def start_herd(
    count: int, data: Path, announce_url: str, metainfo_from: str, digest: str, *extra: str
) -> list[asyncio.subprocess.Process]:
    """``count`` peers that download at the same moment, however slowly their processes start.

    Each peer sets up its engine, says it is ready and waits; only then are
    all told to go, so the test sees a herd rather than a queue.
    """
    peers = [
        await start_peer(
            data / f"peer{i}", announce_url, metainfo_from, digest, "--wait-go", *extra
        )
        for i in range(count)
    ]
    for peer in peers:
        assert (await peer_result(peer))["ready"]
    for peer in peers:
        assert peer.stdin is not None
        peer.stdin.write(b"go\n")
        await peer.stdin.drain()
    return peers


async def finish_peer(peer: asyncio.subprocess.Process) -> dict[str, object]:
    """Close the peer's stdin (stop seeding); return its final counters."""
    assert peer.stdin is not None
    peer.stdin.close()
    result = await peer_result(peer, limit=60)
    async with asyncio.timeout(30):
        await peer.wait()
    return result


def kill_peers(peers: list[asyncio.subprocess.Process]) -> None:
    for peer in peers:
        if peer.returncode is None:
            peer.kill()
