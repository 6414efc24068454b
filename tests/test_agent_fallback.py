"""When the swarm or the origin is down, pulls still succeed (or move on quickly)."""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from tests import containerd
from tests.agent_cluster import (
    ServingThread,
    agent_process,
    build_layout,
    origin_process,
    push,
    wait_until,
)
from tests.components import SKOPEO_FLAGS, docker_registry, free_port, skopeo
from tests.imagebuild import read_oci_layout_digests
from tests.test_agent_containerd import write_hosts


def pull_with_a_dead_tracker(
    tmp_path: Path, seed: int, *origin_args: str
) -> tuple[int, dict[str, float]]:
    """Push an image to an origin, pull it with skopeo through an agent whose tracker
    is down; check every digest. Returns (bytes of the image's blobs, agent metrics)."""
    dead_tracker = f"http://127.0.0.1:{free_port()}"
    args = [arg.replace("{dead_tracker}", dead_tracker) for arg in origin_args]
    with origin_process(tmp_path / "origin", *args) as origin:
        image = build_layout(tmp_path / "layout", seed=seed)
        push(image, origin, "team/fallback:1")
        with agent_process(
            tmp_path / "agent", origin, dead_tracker, settings={"swarm_deadline": 1.0}
        ) as agent:
            out = tmp_path / "out"
            skopeo(
                "copy",
                *SKOPEO_FLAGS,
                f"docker://{agent.registry_hostport}/team/fallback:1",
                f"oci:{out}:latest",
            )
            metrics = agent.metrics()
    assert read_oci_layout_digests(out) == read_oci_layout_digests(image.layout)
    return sum(len(b.data) for b in image.images[0].blobs()), metrics


def test_tracker_down_pull_succeeds_from_the_origin(tmp_path: Path) -> None:
    # The origin seeds (its metainfo is there) but nobody can find it: no tracker.
    blobs, metrics = pull_with_a_dead_tracker(tmp_path, 21, "--tracker", "{dead_tracker}")
    # With no peers, every byte came from the origin over HTTP: as the swarm engine's
    # piece claims (they need no tracker) or, where those were too slow, the fallback.
    from_origin = (
        metrics["krill_agent_swarm_origin_feed_bytes"]
        + metrics["krill_agent_origin_http_bytes_total"]
    )
    assert from_origin >= blobs
    assert metrics['krill_agent_swarm_payload_bytes{direction="downloaded"}'] == 0


def test_an_origin_that_does_not_seed_is_pulled_from_over_http(tmp_path: Path) -> None:
    """No swarm for the blob (the origin runs without a tracker, so it serves no
    metainfo and no piece claims): the agent's fetch falls back to plain HTTP."""
    blobs, metrics = pull_with_a_dead_tracker(tmp_path, 22)
    assert metrics["krill_agent_origin_http_bytes_total"] == blobs
    fallbacks = sum(v for k, v in metrics.items() if k.startswith("krill_agent_fallbacks_total"))
    assert fallbacks >= 2


def test_origin_down_answers_503_so_clients_move_on(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with agent_process(tmp_path / "agent", dead, dead, settings={"swarm_deadline": 1.0}) as agent:
        for url in (
            f"{agent.registry}/v2/team/app/manifests/1",
            f"{agent.registry}/v2/team/app/blobs/sha256:{'a' * 64}",
            f"{agent.api}/blobs/sha256:{'a' * 64}?repo=team/app",
        ):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(url, timeout=30)
            assert info.value.code == 503
            assert json.loads(info.value.read())["errors"][0]["code"] == "UNAVAILABLE"


def test_origin_and_tracker_down_containerd_falls_back_to_upstream(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with (
        docker_registry(tmp_path / "upstream") as upstream,
        agent_process(tmp_path / "agent", dead, dead, settings={"swarm_deadline": 1.0}) as agent,
        containerd.running_containerd(tmp_path / "ctrd") as ctrd,
    ):
        image = build_layout(tmp_path / "layout", seed=22)
        push(image, upstream, "team/up:1")
        host = upstream.removeprefix("http://")
        hosts = tmp_path / "hosts"
        write_hosts(hosts, agent.registry_hostport, f"{host}={upstream}")
        reference = f"{host}/team/up:1"
        ctrd.pull(reference, hosts)
        assert ctrd.image_digest(reference) == image.top.digest
        assert ctrd.snapshots()
    # containerd asked the agent first and got 503s, then went to the server.
    log = (tmp_path / "agent" / "agent.log").read_text()
    assert f"/v2/team/up/manifests/1?ns={host.replace(':', '%3A')}" in log
    assert '" 503 ' in log


def flaky_origin_app(origin: str, seen_ranges: list[str], *, hang: bool = False) -> web.Application:
    """A real HTTP front for the origin that breaks every full blob GET halfway through.

    Manifests and Range requests pass through untouched, so the agent can only
    finish a blob by resuming it with a Range request. With ``hang`` the blob
    GET stalls after half the body instead (the connection stays open).
    """

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("accept", "range")}
        async with ClientSession(auto_decompress=False) as session:
            async with session.get(f"{origin}{request.path_qs}", headers=headers) as upstream:
                body = await upstream.read()
                reply_headers = {
                    k: v
                    for k, v in upstream.headers.items()
                    if k.lower() in ("content-type", "docker-content-digest", "content-range")
                }
                status = upstream.status
        if "Range" in request.headers:
            seen_ranges.append(request.headers["Range"])
        elif "/blobs/" in request.path and status == 200:
            response = web.StreamResponse(status=200, headers=reply_headers)
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            if hang:
                await _until_dropped(request, limit=5.0)  # far past the agent's stall_timeout
            if request.transport is not None:
                request.transport.abort()  # the connection breaks mid-body
            return response
        return web.Response(status=status, body=body, headers=reply_headers)

    app = web.Application()
    app.router.add_get("/{tail:.*}", forward)
    return app


async def _until_dropped(request: web.Request, limit: float) -> None:
    """Hold a response until its client drops the connection, or ``limit`` seconds pass.

    A stalled body is what the agent's stall_timeout is for: once it gives up and
    closes the connection, there is nothing left to hold (a fixed sleep here kept the
    test's server, and so the test, waiting seconds after the agent was done).
    """
    deadline = asyncio.get_running_loop().time() + limit
    while asyncio.get_running_loop().time() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.05)


def test_http_fallback_resumes_a_broken_origin_transfer_with_range(tmp_path: Path) -> None:
    with origin_process(tmp_path / "origin") as origin:
        image = build_layout(tmp_path / "layout", seed=23, layer_size=256 * 1024)
        push(image, origin, "team/resume:1")
        seen_ranges: list[str] = []
        server = ServingThread()
        try:
            flaky = server.serve(flaky_origin_app(origin, seen_ranges))
            with agent_process(tmp_path / "agent", flaky) as agent:
                layer = image.images[0].layers[0]
                url = f"{agent.registry}/v2/team/resume/blobs/{layer.digest}"
                assert urllib.request.urlopen(url, timeout=60).read() == layer.data
        finally:
            server.close()
    # Resumed from where the agent's file ended: at most the half that was sent (bytes
    # aiohttp still buffered when the connection broke are dropped with the error).
    resumed_at = [int(r.removeprefix("bytes=").removesuffix("-")) for r in seen_ranges]
    assert resumed_at and 0 < resumed_at[0] <= len(layer.data) // 2
    assert "origin_fetch.resume" in (tmp_path / "agent" / "agent.log").read_text()


def test_tags_expire_after_their_ttl_and_cached_content_outlives_the_origin(
    tmp_path: Path,
) -> None:
    origin_root = tmp_path / "origin"
    with origin_process(origin_root) as origin:
        first = build_layout(tmp_path / "one", seed=24)
        second = build_layout(tmp_path / "two", seed=25)
        push(first, origin, "team/ttl:1")
        settings = {"tag_ttl": 3.0}
        port = int(origin.rsplit(":", 1)[1])
        with agent_process(tmp_path / "agent", origin, settings=settings) as agent:
            tag_url = f"{agent.registry}/v2/team/ttl/manifests/1"
            assert urllib.request.urlopen(tag_url).read() == first.top.data
            push(second, origin, "team/ttl:1")  # the tag moves on the origin
            assert urllib.request.urlopen(tag_url).read() == first.top.data  # within the TTL
            wait_until(
                lambda: urllib.request.urlopen(tag_url).read() == second.top.data,
                "the agent to serve the moved tag once its TTL is over",
            )
            layer = second.images[0].layers[0]
            blob_url = f"{agent.registry}/v2/team/ttl/blobs/{layer.digest}"
            assert urllib.request.urlopen(blob_url).read() == layer.data
    # The origin is gone now: digests (forever) and cached blobs still answer.
    with agent_process(tmp_path / "agent", f"http://127.0.0.1:{port}", settings=settings) as agent:
        digest_url = f"{agent.registry}/v2/team/ttl/manifests/{second.top.digest}"
        assert urllib.request.urlopen(digest_url).read() == second.top.data
        assert (
            urllib.request.urlopen(f"{agent.registry}/v2/team/ttl/blobs/{layer.digest}").read()
            == layer.data
        )


def test_a_stalled_transfer_aborts_the_client_instead_of_hanging(tmp_path: Path) -> None:
    with origin_process(tmp_path / "origin") as origin:
        image = build_layout(tmp_path / "layout", seed=26, layer_size=256 * 1024)
        push(image, origin, "team/stall:1")
        server = ServingThread()
        try:
            stalling = server.serve(flaky_origin_app(origin, [], hang=True))
            settings = {"stall_timeout": 1.0}
            with agent_process(tmp_path / "agent", stalling, settings=settings) as agent:
                layer = image.images[0].layers[0]
                url = f"{agent.registry}/v2/team/stall/blobs/{layer.digest}"
                with urllib.request.urlopen(url, timeout=60) as response:
                    with pytest.raises(http.client.IncompleteRead) as short:
                        response.read()
                assert len(short.value.partial) < len(layer.data)
                assert layer.data.startswith(short.value.partial)
        finally:
            server.close()
    assert "stalled at byte" in (tmp_path / "agent" / "agent.log").read_text()
    assert "outcome=aborted reason=transfer" in (tmp_path / "agent" / "agent.log").read_text()


def test_concurrent_requests_for_one_blob_share_one_origin_transfer(tmp_path: Path) -> None:
    with origin_process(tmp_path / "origin") as origin:
        image = build_layout(tmp_path / "layout", seed=27, layer_size=512 * 1024)
        push(image, origin, "team/shared:1")
        layer = image.images[0].layers[0]
        with agent_process(tmp_path / "agent", origin) as agent:
            url = f"{agent.registry}/v2/team/shared/blobs/{layer.digest}"
            with ThreadPoolExecutor(8) as pool:
                bodies = list(pool.map(lambda _: urllib.request.urlopen(url).read(), range(8)))
            metrics = agent.metrics()
    assert bodies == [layer.data] * 8
    assert metrics["krill_agent_origin_http_bytes_total"] == len(layer.data)
