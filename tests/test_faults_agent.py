"""The agent killed mid-download, and the agent's cache disk full, as real processes.

* SIGKILL while a blob streams in from the origin: the partial file is on
  disk when the agent dies; the restarted agent removes it, indexes nothing
  it has not verified, and the next pull fetches the blob whole.
* The cache directory on a tmpfs too small for a layer: the pull of that
  layer is refused with a 503 before any byte goes out (so containerd moves
  on to the next host in hosts.toml instead of retrying a transfer that can
  only be cut), no partial file or index entry stays, smaller blobs are
  still served, and the layer is served once space frees.

The origin is reached through a ``GatedProxy`` (tests/faults.py), which stops
the response after 1 MiB: the agent is provably mid-download when it dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from krill.blobstore import BlobStore
from krill.digests import Digest
from tests.agent_cluster import (
    Agent,
    agent_process,
    origin_and_tracker,
    origin_process,
    wait_until,
)
from tests.faults import (
    SmallDisk,
    gated_proxy,
    get_body,
    incoming_files,
    push_blob,
    small_disk,
    stored_blobs,
)
from tests.metrics_text import read_metrics
from tests.test_faults_origin_kill import CUT_SHORT

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
REPO = "team/app"
HTTP_ONLY = {"deltas": False, "stall_timeout": 120.0}


def blob_url(agent: Agent, digest: str) -> str:
    return f"{agent.registry}/v2/{REPO}/blobs/{digest}"


def indexed(agent_data: Path) -> set[str]:
    """The digests the cache index on disk lists."""
    index = agent_data / "blobs" / "index.json"
    return set(json.loads(index.read_text())["blobs"]) if index.exists() else set()


def partial_bytes(store_root: Path) -> int:
    return sum(p.stat().st_size for p in incoming_files(store_root))


def test_an_agent_killed_mid_download_keeps_nothing_unverified_and_pulls_again(
    tmp_path: Path,
) -> None:
    data = os.urandom(64 * MiB)
    agent_root = tmp_path / "agent"
    store = agent_root / "data" / "blobs"
    with (
        origin_process(tmp_path / "origin") as origin,
        gated_proxy(int(origin.rsplit(":", 1)[1])) as proxy,
        ThreadPoolExecutor(1) as pool,
    ):
        digest = push_blob(origin, data)
        with agent_process(agent_root, proxy.url, settings=HTTP_ONLY) as agent:
            proxy.stop_responses_after(MiB)
            pull = pool.submit(get_body, blob_url(agent, digest))
            wait_until(lambda: proxy.waiting_at_gate, "the agent to be mid-download")
            wait_until(lambda: partial_bytes(store) > 0, "the partial file on the agent's disk")
            agent.process.kill()
            agent.process.wait()
        with pytest.raises(CUT_SHORT):
            pull.result(timeout=60)
        assert stored_blobs(store) == set()
        proxy.open_gate()
        with agent_process(agent_root, proxy.url, settings=HTTP_ONLY) as agent:
            assert incoming_files(store) == []  # removed at start: never served, never kept
            assert digest not in indexed(agent.data)
            assert get_body(blob_url(agent, digest)) == data
            wait_until(lambda: digest in indexed(agent.data), "the blob in the cache index")
            assert BlobStore(store).path(Digest.parse(digest)).read_bytes() == data


@contextlib.contextmanager
def agent_on_a_small_disk(
    tmp_path: Path, origin: str, size: int
) -> Iterator[tuple[Agent, SmallDisk]]:
    """An agent whose data directory (cache, index, layer index) is a ``size``-byte tmpfs;
    its config and log stay on the test's own disk."""
    root = tmp_path / "agent"
    with (
        small_disk(root / "data", size) as disk,
        agent_process(root, origin, settings=HTTP_ONLY) as agent,
    ):
        yield agent, disk


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_layer_bigger_than_the_agents_free_disk_fails_cleanly_and_pulls_once_space_frees(
    tmp_path: Path,
) -> None:
    big, small = os.urandom(8 * MiB), os.urandom(256 * 1024)
    with origin_process(tmp_path / "origin") as origin:
        big_digest, small_digest = push_blob(origin, big), push_blob(origin, small)
        with agent_on_a_small_disk(tmp_path, origin, 4 * MiB) as (agent, disk):
            with pytest.raises(urllib.error.HTTPError) as refused:
                get_body(blob_url(agent, big_digest))
            assert refused.value.code == 503  # before any byte: containerd tries the next host
            error = json.loads(refused.value.read())["errors"][0]
            assert error["code"] == "UNAVAILABLE"
            assert "cache disk has" in error["message"]  # the cause, not just "failed"
            store = disk.path / "blobs"
            wait_until(lambda: incoming_files(store) == [], "the partial file to be removed")
            assert stored_blobs(store) == set()
            assert get_body(f"{agent.api}/health") is not None
            assert get_body(blob_url(agent, small_digest)) == small
            disk.resize(64 * MiB)  # in place: the same agent process carries on
            assert get_body(blob_url(agent, big_digest)) == big
            wait_until(lambda: big_digest in indexed(disk.path), "the layer in the cache index")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_disk_evicts_cached_blobs_for_a_new_one_whatever_the_budget(
    tmp_path: Path,
) -> None:
    """The cache's budget (20 GiB by default) is far above this disk: only the disk says
    there is no room. A review found every new blob refused while older ones sat there."""
    first, second = os.urandom(6 * MiB), os.urandom(6 * MiB)
    with origin_process(tmp_path / "origin") as origin:
        first_digest, second_digest = push_blob(origin, first), push_blob(origin, second)
        with agent_on_a_small_disk(tmp_path, origin, 10 * MiB) as (agent, disk):
            assert get_body(blob_url(agent, first_digest)) == first
            wait_until(lambda: first_digest in indexed(disk.path), "the first blob cached")
            assert get_body(blob_url(agent, second_digest)) == second
            wait_until(lambda: second_digest in indexed(disk.path), "the second blob cached")
            assert first_digest not in indexed(disk.path)
            assert stored_blobs(disk.path / "blobs") == {second_digest}
            evicted = 'krill_agent_cache_evictions_total{reason="disk_full"}'
            assert read_metrics(agent.api).get(evicted) == 1


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_swarm_pull_bigger_than_the_agents_free_disk_fails_cleanly(tmp_path: Path) -> None:
    """The same through the swarm (a seeding origin and a tracker): libtorrent, not the
    HTTP fallback, would write the layer."""
    big = os.urandom(8 * MiB)
    with origin_and_tracker(tmp_path / "servers") as (origin, tracker):
        digest = push_blob(origin, big)
        root = tmp_path / "agent"
        with (
            small_disk(root / "data", 4 * MiB) as disk,
            agent_process(root, origin, tracker, settings=HTTP_ONLY) as agent,
        ):
            with pytest.raises(urllib.error.HTTPError) as refused:
                get_body(blob_url(agent, digest))
            assert refused.value.code == 503
            store = disk.path / "blobs"
            wait_until(lambda: incoming_files(store) == [], "the partial file to be removed")
            assert stored_blobs(store) == set()
            disk.resize(64 * MiB)
            assert get_body(blob_url(agent, digest)) == big
