"""Clock skew between nodes: announces, pulls and peer expiry do not depend on agreeing clocks.

Each skewed node is a real ``krill`` process run under libfaketime
(``LD_PRELOAD``, an offset on the wall clock only: ``FAKETIME_DONT_FAKE_MONOTONIC``),
so every ``time.time()`` in it, and in libtorrent's threads, reads the wrong
time, as on a host whose NTP is broken.

The cluster: a seeding origin and redis-server at the true time; two trackers
sharing that Redis, one at the true time, one **3 hours ahead**; agent A a day
behind, announcing to the true tracker; agent B a day ahead, announcing to the
fast one. Peer expiry is the one place where Krill compares times that
different nodes wrote: a peer's expiry in Redis, set by one tracker and judged
by another. With each tracker's own clock, the fast tracker saw every peer the
other recorded as expired three hours ago (it handed out nobody, and deleted
them), and the peers it recorded lived three hours too long for the other.

What the test proves:

* the fast tracker hands out the peers the true one recorded, and the reverse;
* every expiry in Redis is within ``peer_ttl`` of Redis' own time, whichever
  tracker wrote it (expiry is on Redis' clock, docs/reliability.md);
* both skewed agents pull the blob byte-exact (pieces checked against the
  metainfo), and B gets bytes from its peers, not by HTTP fallback;
* a peer that stops announcing (A, SIGKILLed) leaves both trackers' swarms
  once ``peer_ttl`` has passed, as documented, while the live ones stay.

Bearer tokens are checked only by the origin that issued them, against its
own clock, so a client's or agent's skew cannot expire them; replicas sharing
a token key are the exception (docs/reliability.md, "Open").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import cast
from unittest import mock

import pytest
import redis

from tests.agent_cluster import (
    Agent,
    agent_process,
    origin_process,
    started_together,
    wait_until,
)
from tests.components import free_port, krill_process
from tests.faults import announce, blob_infohash, get_body, push_blob

FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(FAKETIME) or shutil.which("redis-server") is None,
        reason="needs libfaketime (Debian package faketime) and redis-server",
    ),
]

MiB = 1024 * 1024
REPO = "team/app"
# libtorrent announces at most every 5 s (its min_announce_interval), so a live
# peer re-announces within 9 s with 4 s to spare for an announce delayed on a
# loaded machine; a dead one is gone 9 s after its last. The test waits out one
# whole TTL after A's last announce: every second here is a second of the test.
PEER_TTL = 9
TRACKER_CONFIG = f"interval = 2\nmin_interval = 1\npeer_ttl = {PEER_TTL}\n"
AGENT_SETTINGS = {"swarm_deadline": 20.0, "deltas": False}
WATCHER_PORT = 9  # discard: the tracker lists our watcher, nobody can connect to it


@contextlib.contextmanager
def skewed(offset: str) -> Iterator[None]:
    """Processes started in the block run with their wall clock ``offset`` off ("+3h", "-1d")."""
    env = {"LD_PRELOAD": FAKETIME, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    with mock.patch.dict(os.environ, env):
        yield


@contextlib.contextmanager
def tracker(root: Path, origin: str, redis_url: str, port: int | None = None) -> Iterator[str]:
    """A tracker on the shared Redis (on ``port`` when the origin must know it first)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tracker.toml").write_text(TRACKER_CONFIG)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["tracker", "--listen", f"127.0.0.1:{port}", "--origin", origin, "--redis", redis_url]
    args += ["--config", str(root / "tracker.toml")]
    with krill_process(args, root / "tracker.log", f"{url}/health"):
        yield url


def peers(tracker_url: str, infohash: bytes) -> set[tuple[str, int]]:
    """Who the tracker hands our watcher (a leecher) for ``infohash``."""
    raw = announce(tracker_url, infohash, WATCHER_PORT, peer_id=b"-KA0100-watcher00000")
    compact = raw.get(b"peers", b"")
    assert isinstance(compact, bytes), raw
    return {
        (socket.inet_ntoa(compact[i : i + 4]), struct.unpack("!H", compact[i + 4 : i + 6])[0])
        for i in range(0, len(compact), 6)
    } - {("127.0.0.1", WATCHER_PORT)}


def expiries_from_redis_time(redis_url: str, infohash: bytes) -> list[float]:
    """Each stored peer's expiry minus Redis' time now (seconds it has left)."""
    client = redis.Redis.from_url(redis_url)
    try:
        seconds, micros = client.time()
        now = seconds + micros / 1e6
        # No decode_responses: redis-py hands back bytes (its stubs say bytes | str).
        values = cast(list[bytes], client.hvals(f"krill:tracker:{infohash.hex()}"))
    finally:
        client.close()
    return [float(value.split(b"|")[0]) - now for value in values]


def swarm_downloaded(agent: Agent) -> float:
    return agent.metrics().get('krill_agent_swarm_payload_bytes{direction="downloaded"}', 0.0)


def test_trackers_and_agents_with_clocks_hours_apart_share_one_swarm(
    tmp_path: Path, redis_url: str
) -> None:
    data = os.urandom(8 * MiB)
    true_port = free_port()
    true_url = f"http://127.0.0.1:{true_port}"
    origin_port = free_port()
    origin = f"http://127.0.0.1:{origin_port}"
    with contextlib.ExitStack() as stack:
        # The two nodes at the true time start at once (each needs only the other's
        # address); the skewed ones one by one, as each needs its own environment.
        stack.enter_context(
            started_together(
                [
                    origin_process(tmp_path / "origin", "--tracker", true_url, port=origin_port),
                    tracker(tmp_path / "true", origin, redis_url, true_port),
                ]
            )
        )
        with skewed("+3h"):
            fast = stack.enter_context(tracker(tmp_path / "fast", origin, redis_url))
        with skewed("-1d"):
            behind = stack.enter_context(
                agent_process(tmp_path / "a", origin, true_url, settings=AGENT_SETTINGS)
            )
        with skewed("+1d"):
            ahead = stack.enter_context(
                agent_process(tmp_path / "b", origin, fast, settings=AGENT_SETTINGS)
            )
        digest = push_blob(origin, data)
        infohash = blob_infohash(origin, digest)

        assert get_body(f"{behind.registry}/v2/{REPO}/blobs/{digest}") == data
        wait_until(
            lambda: len(peers(fast, infohash)) >= 2,
            "the fast tracker handing out the origin and agent A (recorded by the true one)",
            within=60,
        )
        assert get_body(f"{ahead.registry}/v2/{REPO}/blobs/{digest}") == data
        assert ahead.metrics().get("krill_agent_origin_http_bytes_total", 0.0) == 0
        wait_until(lambda: swarm_downloaded(ahead) > 0, "agent B's bytes from its peers")
        wait_until(
            lambda: len(peers(true_url, infohash)) >= 3,
            "the true tracker handing out agent B (recorded by the fast one)",
            within=60,
        )
        assert peers(true_url, infohash) == peers(fast, infohash)
        left = expiries_from_redis_time(redis_url, infohash)
        assert left and all(-1 < seconds <= PEER_TTL + 1 for seconds in left), left

        everyone = peers(fast, infohash)
        behind.process.kill()  # no "stopped" announce: it must expire
        behind.process.wait()
        wait_until(
            lambda: len(peers(fast, infohash)) == len(everyone) - 1,
            "agent A to expire from the swarm",
            within=PEER_TTL + 60,
        )
        remaining = peers(fast, infohash)
        assert remaining < everyone  # the origin and agent B, still announcing, stayed
        assert peers(true_url, infohash) == remaining
