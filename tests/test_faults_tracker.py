"""The tracker (and its Redis) killed mid-herd: pulls go on, the swarm forms again.

Real processes: a seeding origin, a tracker on a fixed port (so it can be
SIGKILLed and started again where the agents expect it), three agents.

* While the tracker is down, an agent still pulls the blob (metainfo from the
  origin, bytes from the origin).
* Once it is back, with the memory store (empty after the restart) or the
  Redis store, the swarm's members are in it again (they re-announce), and a
  third agent gets the blob from its peers over the swarm, with no HTTP
  fallback.
* Redis killed and restarted empty under a running tracker: the swarm forms
  again in the new Redis; an announce during the outage gets a bencoded
  failure (libtorrent logs it and retries), not a 500 page.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.agent_cluster import (
    Agent,
    agent_process,
    origin_process,
    ready,
    started_together,
    wait_until,
)
from tests.components import free_port, krill_process, redis_server
from tests.faults import announce, blob_infohash, get_body, push_blob
from tests.metrics_text import read_metrics

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
REPO = "team/app"
# Announce every 2 s (libtorrent waits at least its own min_announce_interval, 5 s):
# the restarted tracker learns its swarm within seconds, not the default 30 s.
TRACKER_CONFIG = "interval = 2\nmin_interval = 1\npeer_ttl = 30\n"
AGENT_SETTINGS = {"swarm_deadline": 20.0, "deltas": False}
WATCHER_PORT = 9  # discard: the tracker lists our watcher, nobody can connect to it


@dataclass
class RestartableTracker:
    port: int
    root: Path
    origin: str
    redis: str | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextlib.contextmanager
    def running(self, name: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "tracker.toml"
        config.write_text(TRACKER_CONFIG)
        args = ["tracker", "--listen", f"127.0.0.1:{self.port}", "--origin", self.origin]
        args += ["--config", str(config)]
        if self.redis:
            args += ["--redis", self.redis]
        with krill_process(args, self.root / f"{name}.log", f"{self.url}/health") as proc:
            self.process = proc
            yield

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def announce(self, infohash: bytes) -> dict[bytes, object]:
        """A leecher's announce (our watcher); the tracker's decoded answer."""
        return announce(self.url, infohash, WATCHER_PORT, peer_id=b"-KA0100-watcher00000")

    def peers(self, infohash: bytes) -> set[tuple[str, int]]:
        """Who the tracker hands our watcher for ``infohash`` (the watcher excluded)."""
        raw = self.announce(infohash).get(b"peers", b"")
        assert isinstance(raw, bytes)
        return {
            (socket.inet_ntoa(raw[i : i + 4]), struct.unpack("!H", raw[i + 4 : i + 6])[0])
            for i in range(0, len(raw), 6)
        }


def pull(agent: Agent, digest: str) -> bytes:
    return get_body(f"{agent.registry}/v2/{REPO}/blobs/{digest}")


def swarm_downloaded(agent: Agent) -> float:
    return agent.metrics().get('krill_agent_swarm_payload_bytes{direction="downloaded"}', 0.0)


@dataclass
class Herd:
    origin: str
    tracker: RestartableTracker
    agents: list[Agent]


@contextlib.contextmanager
def herd(tmp_path: Path, redis: str | None = None) -> Iterator[Herd]:
    """Origin (seeding), tracker and three agents; the tracker runs until the test kills it.

    Origin and tracker start at once (each needs only the other's address, fixed up
    front), then the agents at once: 0.4 s less than one by one. All five at once
    is no faster on two cores (the agents' start-ups are mostly CPU).
    """
    origin_port = free_port()
    origin = f"http://127.0.0.1:{origin_port}"
    tracker = RestartableTracker(free_port(), tmp_path / "tracker", origin, redis)
    agents = [
        agent_process(tmp_path / f"agent{i}", origin, tracker.url, settings=AGENT_SETTINGS)
        for i in range(3)
    ]
    services = [
        origin_process(tmp_path / "origin", "--tracker", tracker.url, port=origin_port),
        tracker.running("tracker-1"),
    ]
    with started_together(services), started_together(agents) as started:
        yield Herd(origin, tracker, started)


def swarm_of(herd: Herd, digest: str) -> bytes:
    return blob_infohash(herd.origin, digest)


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_killed_tracker_loses_no_pull_and_the_swarm_forms_again_after_its_restart(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    redis = request.getfixturevalue("redis_url") if store == "redis" else None
    data = bytes(range(256)) * (8 * MiB // 256)
    with herd(tmp_path, redis) as h:
        first, second, third = h.agents
        digest = push_blob(h.origin, data)
        assert pull(first, digest) == data
        h.tracker.kill()
        assert pull(second, digest) == data  # no tracker: metainfo and bytes from the origin
        with h.tracker.running("tracker-2"):
            infohash = swarm_of(h, digest)
            wait_until(
                lambda: len(h.tracker.peers(infohash)) >= 3,
                "the origin and both agents in the restarted tracker's swarm",
                within=120,
            )
            assert pull(third, digest) == data
            assert third.metrics().get("krill_agent_origin_http_bytes_total", 0.0) == 0
            wait_until(lambda: swarm_downloaded(third) > 0, "bytes from peers on the third agent")


def kill_redis(url: str) -> None:
    """SIGKILL the redis-server at ``url`` (one this test started), found by its own PID."""
    port = url.rsplit(":", 1)[1].split("/")[0]
    info = subprocess.run(
        ["redis-cli", "-p", port, "info", "server"], capture_output=True, text=True, check=True
    ).stdout
    pid = int(next(line for line in info.splitlines() if line.startswith("process_id:"))[11:])
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not port_open(int(port)), "redis to be gone")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_redis_killed_under_the_tracker_and_restarted_empty_the_swarm_forms_again(
    tmp_path: Path,
) -> None:
    data = bytes(range(256)) * (8 * MiB // 256)
    redis_port = free_port()
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server(tmp_path / "redis-1", redis_port))
        h = stack.enter_context(herd(tmp_path, redis))
        first, second, _ = h.agents
        digest = push_blob(h.origin, data)
        assert pull(first, digest) == data
        infohash = swarm_of(h, digest)
        kill_redis(redis)
        with redis_server(tmp_path / "redis-2", redis_port):  # empty: no persistence
            wait_until(
                lambda: len(h.tracker.peers(infohash)) >= 2,
                "the origin and the first agent in the new Redis",
                within=120,
            )
            assert pull(second, digest) == data
            assert second.metrics().get("krill_agent_origin_http_bytes_total", 0.0) == 0
            wait_until(lambda: swarm_downloaded(second) > 0, "bytes from peers")


def test_an_announce_while_redis_is_down_gets_a_bencoded_failure(tmp_path: Path) -> None:
    redis_port = free_port()
    with redis_server(tmp_path / "redis", redis_port) as redis:
        dead_origin = f"http://127.0.0.1:{free_port()}"
        tracker = RestartableTracker(free_port(), tmp_path / "tracker", dead_origin, redis)
        with tracker.running("tracker"):
            assert read_metrics(tracker.url)["krill_tracker_peer_store_up"] == 1
            kill_redis(redis)
            answer = tracker.announce(bytes(range(20)))  # HTTP 200 with a reason
            assert b"failure reason" in answer, answer
            # when to try again: the tracker's min interval (libtorrent backs off from there)
            assert answer[b"interval"] == answer[b"min interval"] == 1, answer
            assert tracker.process is not None and tracker.process.poll() is None
            assert read_metrics(tracker.url)["krill_tracker_peer_store_up"] == 0


def test_a_seed_refused_while_redis_was_down_is_in_the_swarm_soon_after_it_is_back(
    tmp_path: Path,
) -> None:
    """The origin's and an agent's announces are refused (Redis down); they retry in seconds.

    libtorrent read a failure without ``interval`` as "again in 1800 s", so a seed
    that announced into a Redis outage stayed out of the swarm for half an hour
    (and this file's Redis restart test failed in CI when an announce hit the gap).
    The agent says it is refused (``/ready``) until the tracker takes it again.
    """
    redis_port, origin_port = free_port(), free_port()
    origin = f"http://127.0.0.1:{origin_port}"
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server(tmp_path / "redis-1", redis_port))
        tracker = RestartableTracker(free_port(), tmp_path / "tracker", origin, redis)
        # Origin and tracker at once: each needs only the other's address to come up.
        stack.enter_context(
            started_together(
                [
                    origin_process(tmp_path / "origin", "--tracker", tracker.url, port=origin_port),
                    tracker.running("tracker"),
                ]
            )
        )
        agent = stack.enter_context(
            agent_process(tmp_path / "agent", origin, tracker.url, settings=AGENT_SETTINGS)
        )
        kill_redis(redis)
        data = bytes(range(256)) * (MiB // 256)
        digest = push_blob(origin, data)
        assert pull(agent, digest) == data  # from the origin: the tracker hands out no one
        infohash = blob_infohash(origin, digest)
        refused = 'krill_tracker_announces_total{event="started",result="failure"}'
        wait_until(
            lambda: read_metrics(tracker.url).get(refused, 0) >= 2, "both refused announces"
        )
        wait_until(lambda: ready(agent.api)[0] == 503, "the agent unready while refused")
        assert "Redis is unreachable" in ready(agent.api)[1]["tracker"]["detail"]
        with redis_server(tmp_path / "redis-2", redis_port):  # empty: no persistence
            wait_until(
                lambda: len(tracker.peers(infohash)) >= 2,
                "the origin and the agent in the swarm once Redis is back",
                within=120,
            )
            wait_until(lambda: ready(agent.api)[0] == 200, "the agent ready again")
