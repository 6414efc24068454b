"""The latency histograms move when blobs are pulled.

Real processes: a seeding origin, its tracker, an agent that pulls through the
swarm and one without a tracker that pulls from the origin over HTTP. A pull
shows in the agent's time to first byte and total time under its source
(swarm, origin, upstream when the origin's mirror fetches it for the pull,
then cache for the second GET), in the swarm download time, and
in every service's request latency under the route's pattern (never the raw
path). The delta path is driven in-process with a clock the test moves, so
the seconds observed are exact.
"""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpClient

from krill.agent.cache import CacheLimits, NodeCache
from krill.agent.fetcher import BlobFetcher, CachedBlob
from krill.agent.metrics import AgentMetrics
from krill.blobstore import BlobStore
from krill.digests import Digest
from tests.agent_cluster import (
    Agent,
    PushedImage,
    agent_process,
    build_layout,
    origin_and_tracker,
    origin_process,
    push,
)
from tests.clocks import ManualClock
from tests.components import docker_registry
from tests.metrics_text import parse_metrics, read_metrics
from tests.polling import until_sync
from tests.test_delta_origin import _push_versions, _versions

REPOSITORY = "team/timed"


@dataclass
class Cluster:
    origin: str
    tracker: str
    swarm_agent: Agent
    http_agent: Agent
    image: PushedImage


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("histograms")
    with contextlib.ExitStack() as stack:
        origin, tracker = stack.enter_context(origin_and_tracker(root))
        image = build_layout(root / "layout", seed=41, layer_size=256 * 1024)
        push(image, origin, f"{REPOSITORY}:1")
        # The swarm gets long enough that a loaded machine does not fall back to HTTP.
        swarm_agent = stack.enter_context(
            agent_process(root / "swarm-agent", origin, tracker, settings={"swarm_deadline": 60.0})
        )
        http_agent = stack.enter_context(agent_process(root / "http-agent", origin))
        yield Cluster(origin, tracker, swarm_agent, http_agent, image)


def get(url: str, headers: dict[str, str] | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as response:
        return bytes(response.read())


def count(metrics: dict[str, float], name: str, **labels: str) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return metrics.get(f"{name}_count{{{label_text}}}" if labels else f"{name}_count", 0.0)


def layer_url(agent: Agent, cluster: Cluster, index: int) -> tuple[str, bytes]:
    layer = cluster.image.images[0].layers[index]
    return f"{agent.registry}/v2/{REPOSITORY}/blobs/{layer.digest}", layer.data


def pull_timed_under(agent: Agent, url: str, data: bytes, source: str) -> dict[str, float]:
    """GET ``url`` through ``agent`` (it must answer ``data``): timed once under ``source``,
    both to its first byte and to its end. The agent's metrics after the pull.

    The pull is observed when the agent's handler ends, which can be just after the
    client has read the last byte: the test waits for it rather than race it.
    """
    assert get(url) == data
    until_sync(
        lambda: count(agent.metrics(), "krill_agent_pull_seconds", source=source) >= 1,
        f"the pull timed under {source}",
    )
    pulled = agent.metrics()
    assert count(pulled, "krill_agent_pull_first_byte_seconds", source=source) == 1
    assert count(pulled, "krill_agent_pull_seconds", source=source) == 1
    return pulled


def test_a_swarm_pull_then_a_cached_one_move_their_sources_histograms(cluster: Cluster) -> None:
    agent = cluster.swarm_agent
    url, data = layer_url(agent, cluster, 0)
    pulled = pull_timed_under(agent, url, data, "swarm")
    assert pulled['krill_agent_pull_seconds_sum{source="swarm"}'] > 0
    until_sync(
        lambda: count(agent.metrics(), "krill_agent_swarm_download_seconds") == 1,
        "the swarm download's time observed once its file is committed",
    )
    again = pull_timed_under(agent, url, data, "cache")
    assert count(again, "krill_agent_pull_seconds", source="swarm") == 1
    assert get(url, {"Range": "bytes=10-"}) == data[10:]
    ranged = agent.metrics()
    assert count(ranged, "krill_agent_pull_seconds", source="cache") == 1, "a Range GET is untimed"
    # The registry endpoint's routes are patterns, one per kind: every blob is one series.
    blobs = "/v2/{name}/blobs/{digest}"
    assert count(ranged, "krill_agent_request_seconds", method="GET", route=blobs) == 3
    tracker = read_metrics(cluster.tracker)  # the agent announced its download
    assert count(tracker, "krill_tracker_request_seconds", method="GET", route="/announce") >= 1


def test_an_http_fallback_pull_is_timed_under_the_origin(cluster: Cluster) -> None:
    agent = cluster.http_agent
    url, data = layer_url(agent, cluster, 1)
    pulled = pull_timed_under(agent, url, data, "origin")
    assert count(pulled, "krill_agent_pull_seconds", source="swarm") == 0
    assert count(pulled, "krill_agent_swarm_download_seconds") == 0
    origin = read_metrics(cluster.origin)
    blob_route = "/v2/{name}/blobs/{digest}"
    assert count(origin, "krill_origin_request_seconds", method="GET", route=blob_route) >= 1
    layer_digest = cluster.image.images[0].layers[1].digest
    assert not any(layer_digest in key for key in origin), "a raw path became a label"


def test_a_pull_the_origin_fills_from_its_upstream_is_timed_under_upstream(
    tmp_path: Path,
) -> None:
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(docker_registry(tmp_path / "upstream"))
        image = build_layout(tmp_path / "layout", seed=43)
        push(image, upstream, "team/mirrored:1")
        origin = stack.enter_context(origin_process(tmp_path / "origin", "--upstream", upstream))
        agent = stack.enter_context(agent_process(tmp_path / "agent", origin))
        layer = image.images[0].layers[0]
        url = f"{agent.registry}/v2/team/mirrored/blobs/{layer.digest}"
        pulled = pull_timed_under(agent, url, layer.data, "upstream")
        assert count(pulled, "krill_agent_pull_seconds", source="origin") == 0
        again = pull_timed_under(agent, url, layer.data, "cache")  # waits for the observation
        assert count(again, "krill_agent_pull_seconds", source="upstream") == 1


async def test_the_origin_times_each_delta_it_computes(
    tmp_path: Path, origin_server: TestServer, aiohttp_client: AiohttpClient
) -> None:
    v1, v2 = _versions()
    await _push_versions(tmp_path, origin_server, v1, v2)  # the tag move queues the pairs
    client = await aiohttp_client(origin_server)
    seen = parse_metrics(await (await client.get("/metrics")).text())
    assert seen.get('krill_origin_delta_compute_seconds_count{result="ok"}', 0) >= 1
    computed = seen['krill_origin_delta_computed_total{result="ok"}']
    assert seen['krill_origin_delta_compute_seconds_count{result="ok"}'] == computed


# ---- the delta path, on a clock the test moves ------------------------------------


class RebuildTakingSeconds:
    """A stand-in for the delta rebuilder: the rebuild takes ``seconds`` on ``clock``."""

    def __init__(self, cache: NodeCache, data: bytes, clock: ManualClock, seconds: float) -> None:
        self._cache, self._data, self._clock, self._seconds = cache, data, clock, seconds

    async def rebuild(self, digest: Digest, repository: str | None, ensure: object) -> bool:
        self._clock.advance(self._seconds)
        await self._cache.add(self._cache.store.put_bytes(self._data, digest))
        return True


async def test_a_layer_rebuilt_from_a_delta_is_timed_and_served_as_delta(tmp_path: Path) -> None:
    clock = ManualClock()
    metrics = AgentMetrics()
    cache = NodeCache(BlobStore(tmp_path / "blobs"), CacheLimits(budget=1 << 30))
    fetcher = BlobFetcher(
        cache,
        swarm=None,
        origin=None,
        swarm_deadline=1.0,
        on_downloaded=metrics.downloaded,
        clock=clock,
    )
    data = b"a rebuilt layer" * 1000
    digest = Digest.of_bytes(data)
    fetcher.deltas = RebuildTakingSeconds(cache, data, clock, 7.5)  # type: ignore[assignment]
    blob = await fetcher.open(digest, REPOSITORY)
    assert isinstance(blob, CachedBlob) and blob.source == "delta"
    seen = parse_metrics(metrics.render().decode())
    assert seen["krill_agent_delta_rebuild_seconds_count"] == 1
    assert seen["krill_agent_delta_rebuild_seconds_sum"] == 7.5
    again = await fetcher.open(digest, REPOSITORY)
    assert isinstance(again, CachedBlob) and again.source == "cache"
    await fetcher.close()
