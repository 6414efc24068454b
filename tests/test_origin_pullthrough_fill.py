"""Pull-through edge cases against a small scripted upstream (an aiohttp server on loopback).

The scripted upstream lets each test make upstream slow, hung, or refuse
one repository, which a real registry cannot be told to do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
from collections import Counter
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from krill.origin.upstream import UpstreamClient
from krill.registry_errors import RegistryError
from krill.singleflight import SingleFlight
from tests.clocks import ManualClock
from tests.fixtures_origin import StartOrigin
from tests.polling import until

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


class ScriptedUpstream:
    """Serves one blob and one manifest; what it does per request is set by the test."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        self.manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": self.digest,
                    "size": len(blob),
                },
                "layers": [],
            }
        ).encode()
        self.refuse_repos: set[str] = set()
        self.hang_manifests = False
        self.challenge_realm: str | None = None
        self.requests: Counter[str] = Counter()
        self.token_requests = 0
        self.released = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self.token)
        app.router.add_get("/v2/{name:.+}/blobs/{digest}", self.get_blob)
        app.router.add_get("/v2/{name:.+}/manifests/{ref}", self.get_manifest)
        return app

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        return web.json_response({"token": "t"})

    def _challenge(self, request: web.Request) -> web.Response | None:
        if self.challenge_realm is None or request.headers.get("Authorization") == "Bearer t":
            return None
        header = f'Bearer realm="{self.challenge_realm}",service="s"'
        return web.Response(status=401, headers={"WWW-Authenticate": header})

    async def get_blob(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests[f"blob {name}"] += 1
        if name in self.refuse_repos:
            # A slow refusal (the scenario): a second repository's request arrives meanwhile.
            await asyncio.sleep(0.3)
            return web.Response(status=404)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = len(self.blob)
        await response.prepare(request)
        await response.write(self.blob[:1024])
        await asyncio.sleep(0.3)  # a slow upstream (the scenario): clients join mid-fetch
        for start in range(1024, len(self.blob), 1 << 20):
            await response.write(self.blob[start : start + (1 << 20)])
        await response.write_eof()
        return response

    async def get_manifest(self, request: web.Request) -> web.Response:
        refused = self._challenge(request)
        if refused is not None:
            return refused
        self.requests["manifest"] += 1
        if self.hang_manifests:
            await self.released.wait()
        return web.Response(body=self.manifest, headers={"Content-Type": MANIFEST_TYPE})


async def start_mirror(
    start_origin: StartOrigin, aiohttp_server: AiohttpServer, blob: bytes, **settings: Any
) -> tuple[ScriptedUpstream, TestServer, TestServer]:
    """The scripted upstream serving ``blob``, and an origin mirroring it."""
    upstream = ScriptedUpstream(blob)
    upstream_server = await aiohttp_server(upstream.app())
    origin = await start_origin(
        deltas=False, upstream=f"http://127.0.0.1:{upstream_server.port}", **settings
    )
    return upstream, upstream_server, origin


def stalled_client(port: int, path: str) -> socket.socket:
    """A client that asks for ``path`` and never reads the answer (tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: origin\r\n\r\n".encode())
    return sock


async def test_a_client_that_never_reads_does_not_stall_the_others(
    start_origin: StartOrigin, aiohttp_server: AiohttpServer
) -> None:
    blob = os.urandom(24 << 20)  # far more than the socket buffers hold
    upstream, _, origin = await start_mirror(start_origin, aiohttp_server, blob)
    path = f"/v2/lib/app/blobs/{upstream.digest}"
    sock = stalled_client(origin.port, path)
    try:
        await until(lambda: upstream.requests["blob lib/app"] == 1, "the stalled client's fetch")
        async with asyncio.timeout(60), aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{origin.port}{path}") as resp:
                assert resp.status == 200
                body = await resp.read()
    finally:
        sock.close()
    assert hashlib.sha256(body).hexdigest() == upstream.digest.removeprefix("sha256:")
    assert upstream.requests["blob lib/app"] == 1


async def test_a_refusal_for_one_repository_does_not_fail_another(
    start_origin: StartOrigin, aiohttp_server: AiohttpServer
) -> None:
    upstream, _, origin = await start_mirror(start_origin, aiohttp_server, os.urandom(4096))
    upstream.refuse_repos.add("team/private")
    base = f"http://127.0.0.1:{origin.port}/v2"
    async with aiohttp.ClientSession() as session:

        async def get(repo: str) -> tuple[int, bytes]:
            async with session.get(f"{base}/{repo}/blobs/{upstream.digest}") as resp:
                return resp.status, await resp.read()

        refused = asyncio.create_task(get("team/private"))
        await until(lambda: upstream.requests["blob team/private"] == 1, "the refused fetch")
        allowed = asyncio.create_task(get("team/public"))
        assert (await refused)[0] == 404
        assert await allowed == (200, upstream.blob)


async def test_a_hung_upstream_does_not_hold_back_a_stored_tag(
    start_origin: StartOrigin, aiohttp_server: AiohttpServer
) -> None:
    clock = ManualClock()
    upstream, _, origin = await start_mirror(
        start_origin, aiohttp_server, b"config", clock=clock, tag_ttl=1.0, upstream_tag_timeout=0.2
    )
    url = f"http://127.0.0.1:{origin.port}/v2/lib/app/manifests/latest"
    async with aiohttp.ClientSession() as session:

        async def get() -> tuple[int, bytes]:
            async with asyncio.timeout(30), session.get(url) as resp:
                return resp.status, await resp.read()

        assert (await get())[0] == 200
        upstream.hang_manifests = True
        clock.advance(1.1)  # the tag is due for re-resolution
        first = asyncio.create_task(get())
        await until(lambda: upstream.requests["manifest"] == 2, "the tag to be asked again")
        clock.advance(0.2)  # upstream_tag_timeout passes without an answer
        assert await first == (200, upstream.manifest)
        for _ in range(2):  # served at once: nobody asks upstream (or waits) until the TTL passes
            assert await get() == (200, upstream.manifest)
    assert upstream.requests["manifest"] == 2
    upstream.released.set()


async def test_credentials_go_only_to_the_upstreams_own_token_realm(
    start_origin: StartOrigin, aiohttp_server: AiohttpServer
) -> None:
    upstream, upstream_server, origin = await start_mirror(
        start_origin, aiohttp_server, b"config", upstream_username="u", upstream_password="p"
    )
    # The same server by another host name: refused before anything is sent.
    upstream.challenge_realm = f"http://localhost:{upstream_server.port}/token"
    url = f"http://127.0.0.1:{origin.port}/v2/lib/app/manifests/latest"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 502
        assert "upstream_token_hosts" in (await resp.json())["errors"][0]["message"]
    assert upstream.token_requests == 0
    upstream.challenge_realm = f"http://127.0.0.1:{upstream_server.port}/token"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
    assert upstream.token_requests == 1


def test_an_https_upstreams_credentials_never_go_to_plain_http() -> None:
    client = UpstreamClient("https://registry.example", ("u", "p"), token_hosts=("auth.example",))
    client.check_realm("https://registry.example/token")
    client.check_realm("https://auth.example/token")
    for realm in ("http://registry.example/token", "https://evil.example/token", "file:///x"):
        with pytest.raises(RegistryError):
            client.check_realm(realm)


async def test_a_cancelled_leader_does_not_fail_the_other_callers() -> None:
    flights: SingleFlight[str] = SingleFlight()
    started, release = asyncio.Event(), asyncio.Event()

    async def work() -> str:
        started.set()
        await release.wait()
        return "done"

    leader = asyncio.create_task(flights.run("k", work))
    await started.wait()
    follower = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0)  # one loop step: the follower task runs up to joining the flight
    leader.cancel()
    release.set()  # the work finishes after its leader was cancelled
    assert await follower == "done"
    with pytest.raises(asyncio.CancelledError):
        await leader
