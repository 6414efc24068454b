"""The agent in-process against an origin (or a disk) that misbehaves.

A real aiohttp server stands in for the origin and misbehaves on purpose:
it trickles a large manifest in pieces, stops halfway through a blob. The
agent under test is the real ``running_node`` with its registry and control
apps on loopback (swarm off: these cases are about the HTTP path).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from krill import oci
from krill.agent.config import AgentConfig
from krill.agent.control import build_control_app
from krill.agent.node import AgentNode, running_node
from krill.agent.registry import build_registry_app
from krill.blobstore import BlobWriter
from krill.digests import Digest
from tests.fixtures_agent import fake_origin
from tests.imagebuild import build_image, random_files
from tests.metrics_text import parse_metrics
from tests.polling import until

REPO = "team/app"


def big_manifest(layers: int = 700) -> bytes:
    """An image manifest well over 100 KB (many layers), so it crosses the wire in pieces."""
    layer = {"mediaType": oci.OCI_LAYER_GZIP, "digest": "sha256:" + "b" * 64, "size": 1}
    doc = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": "sha256:" + "a" * 64, "size": 1},
        "layers": [layer] * layers,
    }
    return json.dumps(doc).encode()


async def trickle(
    request: web.Request, body: bytes, pieces: int, **headers: str
) -> web.StreamResponse:
    """Send ``body`` in ``pieces`` writes with pauses between them (Content-Length set)."""
    response = web.StreamResponse(headers=headers)
    response.content_length = len(body)
    await response.prepare(request)
    step = -(-len(body) // pieces)
    for start in range(0, len(body), step):
        await response.write(body[start : start + step])
        await asyncio.sleep(0.02)
    await response.write_eof()
    return response


@dataclass
class RunningAgent:
    node: AgentNode
    registry: str
    api: str


@asynccontextmanager
async def in_process_agent(data: Path, origin: str, **settings: Any) -> AsyncIterator[RunningAgent]:
    config = AgentConfig(data=data, origin=origin, use_swarm=False, deltas=False, **settings)
    async with running_node(config) as node:
        registry = TestServer(build_registry_app(node), host="127.0.0.1")
        api = TestServer(build_control_app(node), host="127.0.0.1")
        await registry.start_server()
        await api.start_server()
        try:
            yield RunningAgent(
                node,
                str(registry.make_url("")).rstrip("/"),
                str(api.make_url("")).rstrip("/"),
            )
        finally:
            await registry.close()
            await api.close()


async def test_a_manifest_arriving_in_pieces_is_cached_and_served_whole(tmp_path: Path) -> None:
    body = big_manifest()
    assert len(body) > 100_000

    async def manifest(request: web.Request) -> web.StreamResponse:
        return await trickle(request, body, pieces=4, **{"Content-Type": oci.OCI_MANIFEST})

    async with (
        fake_origin({"/v2/{name:.+}/manifests/{ref}": manifest}) as origin,
        in_process_agent(tmp_path / "agent", origin) as agent,
        aiohttp.ClientSession() as session,
    ):
        for _ in range(2):  # fetched from the origin, then from the agent's cache
            async with session.get(f"{agent.registry}/v2/{REPO}/manifests/1") as response:
                assert response.status == 200
                served = await response.read()
                assert response.headers["Docker-Content-Digest"] == str(Digest.of_bytes(body))
            assert served == body


async def get_blob(session: aiohttp.ClientSession, url: str) -> bytes | None:
    """The body, or None when the agent refused (503) or cut the connection short.

    Which of the two depends on whether the transfer failed before or after the
    response's headers went out.
    """
    try:
        async with session.get(url) as response:
            if response.status == 503:
                return None
            assert response.status == 200
            return await response.read()
    except aiohttp.ClientPayloadError:
        return None


async def test_a_disk_error_at_commit_fails_the_request_and_the_next_one_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(300 * 1024)
    digest = Digest.of_bytes(data)

    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=data)

    def disk_full(self: BlobWriter, *args: object, **kwargs: object) -> Digest:
        raise OSError(errno.ENOSPC, "No space left on device")

    url_path = f"/v2/{REPO}/blobs/{digest}"
    async with (
        fake_origin({"/v2/{name:.+}/blobs/{digest}": blob}) as origin,
        in_process_agent(tmp_path / "agent", origin, stall_timeout=5.0) as agent,
        aiohttp.ClientSession() as session,
    ):
        with monkeypatch.context() as patch:  # fault injection: the fsync/rename fails
            patch.setattr(BlobWriter, "commit", disk_full)
            assert await get_blob(session, agent.registry + url_path) is None
            fetcher = agent.node.fetcher
            await until(lambda: not fetcher.in_flight(digest), "the transfer to be forgotten")
        assert not agent.node.cache.has(digest)
        assert await get_blob(session, agent.registry + url_path) == data
        # Indexed once its transfer commits, which may be just after the client
        # has every byte (the body streams as it arrives).
        await until(lambda: agent.node.cache.has(digest), "the blob in the cache")


async def test_preheat_of_a_stalling_blob_ends_with_an_error_and_releases_it(
    tmp_path: Path,
) -> None:
    image = build_image([random_files(31, count=2, size=64 * 1024)])
    layer = image.layers[0]
    blobs = {b.digest: b.data for b in image.blobs()}
    release = asyncio.Event()

    async def manifest(request: web.Request) -> web.Response:
        return web.Response(body=image.manifest.data, content_type=image.manifest.media_type)

    async def blob(request: web.Request) -> web.StreamResponse:
        data = blobs[request.match_info["digest"]]
        if request.match_info["digest"] != layer.digest:
            return web.Response(body=data)
        response = web.StreamResponse()
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        await release.wait()  # the origin goes silent; the connection stays open
        return response

    routes = {"/v2/{name:.+}/manifests/{ref}": manifest, "/v2/{name:.+}/blobs/{digest}": blob}
    async with (
        fake_origin(routes) as origin,
        in_process_agent(tmp_path / "agent", origin, stall_timeout=1.0) as agent,
        aiohttp.ClientSession() as session,
    ):
        try:
            async with session.post(f"{agent.api}/preheat", json={"image": f"{REPO}:1"}) as r:
                events = [json.loads(line) for line in (await r.read()).splitlines()]
        finally:
            release.set()
        fetcher, cache = agent.node.fetcher, agent.node.cache
        stalled = Digest.parse(layer.digest)
        await until(lambda: not fetcher.in_flight(stalled), "the stalled transfer to be forgotten")
        assert not cache.is_pinned(stalled)
        assert not cache.has(stalled)
    assert events[0]["event"] == "start"
    assert events[-1]["event"] == "error"
    assert "stalled" in str(events[-1]["message"])


async def test_a_request_joining_a_fetch_for_another_repository_gets_the_blob(
    tmp_path: Path,
) -> None:
    """The shared fetch was started for a repository the origin lacks the blob in (404);
    a concurrent request naming the right repository fetches it on its own."""
    data = os.urandom(64 * 1024)
    digest = Digest.of_bytes(data)
    second_waiting = asyncio.Event()

    async def blob(request: web.Request) -> web.Response:
        if request.match_info["name"] != REPO:
            await second_waiting.wait()  # answer only once the other request has joined
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        return web.Response(body=data)

    async with (
        fake_origin({"/v2/{name:.+}/blobs/{digest}": blob}) as origin,
        in_process_agent(tmp_path / "agent", origin) as agent,
        aiohttp.ClientSession() as session,
    ):

        async def get(repository: str) -> tuple[int, bytes]:
            async with session.get(f"{agent.registry}/v2/{repository}/blobs/{digest}") as r:
                return r.status, await r.read()

        wrong = asyncio.create_task(get("other/app"))
        await until(lambda: agent.node.fetcher.in_flight(digest), "the first fetch to start")
        right = asyncio.create_task(get(REPO))
        # A request counts its cache miss and joins the shared fetch in one step.
        await until(lambda: cache_misses(agent) == 2, "the second request to join the fetch")
        second_waiting.set()
        assert (await wrong)[0] == 404
        assert await right == (200, data)


def cache_misses(agent: RunningAgent) -> float:
    values = parse_metrics(agent.node.metrics.render().decode())
    return values.get('krill_agent_cache_lookups_total{result="miss"}', 0.0)


async def test_preheat_of_an_index_with_a_malformed_platform_is_a_clear_error(
    tmp_path: Path,
) -> None:
    image = build_image([random_files(41, count=1, size=1024)])
    entry = image.manifest.descriptor(platform="linux/amd64")  # a string, not an object
    index = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [entry]})

    async def manifest(request: web.Request) -> web.Response:
        return web.Response(body=index.encode(), content_type=oci.OCI_INDEX)

    async with (
        fake_origin({"/v2/{name:.+}/manifests/{ref}": manifest}) as origin,
        in_process_agent(tmp_path / "agent", origin) as agent,
        aiohttp.ClientSession() as session,
    ):
        async with session.post(f"{agent.api}/preheat", json={"image": f"{REPO}:1"}) as r:
            assert r.status == 400
            error = (await r.json())["errors"][0]
    assert error["code"] in ("UNSUPPORTED", "MANIFEST_INVALID")


async def test_a_range_short_of_the_end_waits_for_the_digest_and_gets_no_bad_bytes(
    tmp_path: Path,
) -> None:
    """A range that stops before a blob's end was served from an in-flight HTTP transfer
    as a complete 206 of bytes nobody had checked (security review, stop 39): every
    source holds back only the last byte. The origin here sends other bytes under the
    digest, slowly; the range request must not get them."""
    good = os.urandom(256 * 1024)
    digest = str(Digest.of_bytes(good))
    bad = bytes(b ^ 0xFF for b in good[:1000]) + good[1000:]
    sent_everything = asyncio.Event()

    async def blob(request: web.Request) -> web.StreamResponse:
        response = await trickle(request, bad, pieces=8)
        sent_everything.set()
        return response

    async with (
        fake_origin({f"/v2/{REPO}/blobs/{{digest}}": blob}) as origin,
        in_process_agent(tmp_path / "agent", origin) as agent,
        aiohttp.ClientSession() as session,
    ):
        url = f"{agent.registry}/v2/{REPO}/blobs/{digest}"
        with pytest.raises(aiohttp.ClientError):  # aborted: the digest did not match
            async with session.get(url, headers={"Range": "bytes=0-999"}) as response:
                body = await response.read()
                pytest.fail(f"answered {response.status} with {len(body)} unchecked bytes")
        assert sent_everything.is_set(), "it waited for the whole blob before answering"
