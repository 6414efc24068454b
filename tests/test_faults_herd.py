"""The origin SIGKILLed while a herd of agents pulls one blob through the swarm.

Real processes on loopback: a seeding origin on a fixed port (so it can be
started again where everyone expects it), a tracker, agents whose downloads
are held to 4 MiB/s (``download_rate_limit``, which paces the origin's piece
feed too), so an 8 MiB blob takes two seconds or more and the kill provably
lands mid-pull: the test kills as soon as a metrics poll shows the first bytes
(well under a second even on a loaded machine), and asserts the pull had not
finished. 8 MiB still has pieces of 128 KiB, as 16 MiB had (``krill.metainfo``),
64 of them: four of the origin feed's 16-piece claims.

* One agent already holds the blob: the others finish from it (and from each
  other) with the origin gone.
* Nobody holds it all: the swarm alone cannot finish; the agents keep asking
  the origin for pieces, and complete byte-exact once it is back.
* A seeding agent SIGKILLed while another pulls from the swarm: the pull
  finishes (from the origin).
* A peer that accepts connections and never sends, listed first by the
  tracker (a seeder): libtorrent connects to it, and the pull is not held up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.agent_cluster import (
    Agent,
    agent_process,
    started_together,
    tracker_process,
    wait_until,
)
from tests.components import free_port
from tests.faults import (
    RestartableOrigin,
    announce,
    blob_infohash,
    get_body,
    push_blob,
    silent_peer,
)

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
REPO = "team/app"
BLOB_SIZE = 8 * MiB
PACED: dict[str, object] = {
    "download_rate_limit": 4 * MiB,
    "swarm_deadline": 60.0,
    "stall_timeout": 120.0,
    "deltas": False,
}


def received(agent: Agent) -> float:
    """Blob bytes the agent has received: from peers, the origin's piece feed or HTTP."""
    metrics = agent.metrics()
    return (
        metrics.get('krill_agent_swarm_payload_bytes{direction="downloaded"}', 0.0)
        + metrics.get("krill_agent_swarm_origin_feed_bytes", 0.0)
        + metrics.get("krill_agent_origin_http_bytes_total", 0.0)
    )


@dataclass
class Herd:
    origin: RestartableOrigin
    tracker: str
    agents: list[Agent]


@contextlib.contextmanager
def herd(tmp_path: Path, agents: int, settings: list[dict[str, object]]) -> Iterator[Herd]:
    tracker_port = free_port()
    tracker = f"http://127.0.0.1:{tracker_port}"
    origin = RestartableOrigin(
        free_port(), tmp_path / "origin" / "data", tmp_path, ("--tracker", tracker)
    )
    with contextlib.ExitStack() as stack:
        # Origin and tracker only need each other's address (fixed above) to start:
        # they meet at the first push, so they start together.
        stack.enter_context(
            started_together(
                [
                    origin.running("origin-1"),
                    tracker_process(tmp_path / "tracker", origin.url, port=tracker_port),
                ]
            )
        )
        started = stack.enter_context(
            started_together(
                [
                    agent_process(tmp_path / f"agent{i}", origin.url, tracker, settings=settings[i])
                    for i in range(agents)
                ]
            )
        )
        yield Herd(origin, tracker, started)


def start_pulls(pool: ThreadPoolExecutor, agents: list[Agent], digest: str) -> list[Future[bytes]]:
    return [pool.submit(get_body, f"{agent.registry}/v2/{REPO}/blobs/{digest}") for agent in agents]


def test_with_the_origin_killed_mid_herd_agents_finish_from_a_peer_holding_the_blob(
    tmp_path: Path,
) -> None:
    data = bytes(range(256)) * (BLOB_SIZE // 256)
    unpaced: dict[str, object] = {**PACED, "download_rate_limit": 0}
    with herd(tmp_path, 3, [unpaced, PACED, PACED]) as h, ThreadPoolExecutor(2) as pool:
        holder, *pulling = h.agents
        digest = push_blob(h.origin.url, data)
        assert get_body(f"{holder.registry}/v2/{REPO}/blobs/{digest}") == data
        pulls = start_pulls(pool, pulling, digest)
        wait_until(lambda: all(received(a) > 0 for a in pulling), "both pulls under way")
        h.origin.kill()
        assert all(received(a) < BLOB_SIZE for a in pulling), "the kill came too late"
        assert [p.result(timeout=300) for p in pulls] == [data, data]


def test_with_the_origin_killed_mid_herd_agents_finish_once_it_returns(tmp_path: Path) -> None:
    data = bytes(range(256)) * (BLOB_SIZE // 256)
    with herd(tmp_path, 3, [PACED] * 3) as h, ThreadPoolExecutor(3) as pool:
        digest = push_blob(h.origin.url, data)
        pulls = start_pulls(pool, h.agents, digest)
        wait_until(lambda: all(received(a) > 0 for a in h.agents), "every pull under way")
        h.origin.kill()
        assert all(received(a) < BLOB_SIZE for a in h.agents), "the kill came too late"
        assert not any(p.done() for p in pulls)
        with h.origin.running("origin-2"):
            assert [p.result(timeout=300) for p in pulls] == [data, data, data]


def test_a_seeding_agent_killed_mid_transfer_does_not_stop_a_pull(tmp_path: Path) -> None:
    data = bytes(range(256)) * (BLOB_SIZE // 256)
    unpaced: dict[str, object] = {**PACED, "download_rate_limit": 0}
    with herd(tmp_path, 2, [unpaced, PACED]) as h, ThreadPoolExecutor(1) as pool:
        seeder, puller = h.agents
        digest = push_blob(h.origin.url, data)
        assert get_body(f"{seeder.registry}/v2/{REPO}/blobs/{digest}") == data
        (pull,) = start_pulls(pool, [puller], digest)
        wait_until(lambda: received(puller) > 0, "the pull under way")
        seeder.process.kill()
        seeder.process.wait()
        assert received(puller) < BLOB_SIZE, "the kill came too late"
        assert pull.result(timeout=300) == data


def test_a_peer_that_accepts_and_never_sends_does_not_hold_up_a_pull(tmp_path: Path) -> None:
    data = bytes(range(256)) * (BLOB_SIZE // 256)
    with (
        herd(tmp_path, 1, [PACED]) as h,
        silent_peer() as silent,
        ThreadPoolExecutor(1) as pool,
    ):
        (puller,) = h.agents
        digest = push_blob(h.origin.url, data)
        infohash = blob_infohash(h.origin.url, digest)
        announce(h.tracker, infohash, silent.port, peer_id=b"-KA0100-silent000000", left=0)
        (pull,) = start_pulls(pool, [puller], digest)
        wait_until(lambda: silent.accepted > 0, "the agent to connect to the silent peer")
        assert pull.result(timeout=300) == data
