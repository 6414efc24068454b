"""A partition between two groups of nodes in the middle of a pull.

Five network namespaces on one bridge (``tests/netns.py``), links shaped to
32 Mbit/s so an 8 MiB blob takes seconds to cross: h0 runs origin and
tracker, group A is h1 and h2, group B h3 and h4, an agent on each. All four
pull the same blob at once, through the swarm. Once every agent of B has its
first bytes, packets between B and the others are dropped (iptables, both
ways: no RST, no ICMP, as when a link between two racks fails). The tracker
still hands each group the other's members; connecting to them hangs.

* **B cut from A and from the origin at once**, healed: A's pulls complete
  during the partition (from the origin and each other); B's cannot (its two
  agents can only trade what they had), and complete once the partition
  heals. It heals 10 s after the cut, once the swarm of each agent of B has
  given up on the origin (its request to the origin's piece feed, in flight
  at the cut, timed out), 12 s at most (``netns.hold_until_swarms_gave_up``).
  That length is the fault's, not a
  wait for the pulls: longer than the swarm's request timeouts (the piece
  feed's 10 s read timeout, ``krill.piecefeed``; libtorrent's request and
  piece timeouts, ``krill.swarm.settings``, are no longer), so B recovers
  through the swarm's own retries rather than TCP's, and far shorter than
  the agent's stall timeout (120 s, ``AGENT_CONFIG`` in ``tests/netns.py``).
* **B cut from A only**, never healed during the pulls: B still reaches the
  origin, so every pull completes during the partition.

Every pull is byte-exact (curl ``-f``: an agent that gave up would fail the
transfer, never end it early as if complete), so nothing unverified is
served, and afterwards every agent holds the blob under its digest in its
cache, with no partial file left.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults import incoming_files, stored_blobs
from tests.netns import (
    Cluster,
    KrillServices,
    finish,
    hold_until_swarms_gave_up,
    krill_services,
    received,
    sha256_file,
)
from tests.polling import until_sync

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("ip", "tc", "curl", "iptables")),
        reason="needs ip, tc (iproute2), iptables and curl",
    ),
]

BLOB_SIZE = 8 * 1024 * 1024
RATE_MBIT = 32.0
SERVER = 0
GROUP_A, GROUP_B = (1, 2), (3, 4)
HOSTS = GROUP_A + GROUP_B


@pytest.fixture(scope="module")
def net() -> Iterator[Cluster]:
    cluster = Cluster(prefix=f"kpg{os.getpid()}-", subnet="10.81.0")
    try:
        cluster.build(hosts=5, rate_mbit=RATE_MBIT, mtu=1500)
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("groups")


@pytest.fixture(scope="module")
def services(net: Cluster, work: Path) -> Iterator[KrillServices]:
    """One cluster for both tests: each pulls a blob of its own."""
    with krill_services(net, SERVER, GROUP_A + GROUP_B, work) as services:
        yield services


def push_random_blob(services: KrillServices, path: Path) -> str:
    path.write_bytes(os.urandom(BLOB_SIZE))
    digest = sha256_file(path)
    services.push(path, digest)
    return digest


def this_pull(net: Cluster, hosts: tuple[int, ...]) -> Callable[[int], float]:
    """Bytes each agent receives from now on (the agents are shared: counters only grow)."""
    before = {host: received(net, host) for host in hosts}
    return lambda host: received(net, host) - before[host]


def assert_cached_whole(work: Path, host: int, digest: str) -> None:
    """The agent's cache holds the blob, committed under its digest, and no write under way."""
    store = work / f"agent{host}" / "blobs"
    assert digest in stored_blobs(store), host
    assert incoming_files(store) == [], host


def start_pulls(
    net: Cluster, services: KrillServices, tmp_path: Path
) -> tuple[str, Callable[[int], float], dict[int, subprocess.Popen[str]]]:
    """A new blob on the origin and every agent pulling it: its digest, the bytes each
    agent has received of it so far, the pulls."""
    digest = push_random_blob(services, tmp_path / "blob")
    got = this_pull(net, HOSTS)
    return digest, got, {h: services.pull(h, digest, tmp_path / f"pulled{h}") for h in HOSTS}


def assert_everyone_has_it(work: Path, tmp_path: Path, digest: str) -> None:
    for host in HOSTS:
        assert sha256_file(tmp_path / f"pulled{host}") == digest, host
        assert_cached_whole(work, host, digest)


def test_a_group_cut_from_the_rest_and_the_origin_finishes_after_the_heal(
    net: Cluster, services: KrillServices, work: Path, tmp_path: Path
) -> None:
    digest, got, pulls = start_pulls(net, services, tmp_path)
    until_sync(lambda: all(got(h) > 0 for h in GROUP_B), "group B's first bytes", interval=0.1)
    with net.cut(GROUP_B, (SERVER, *GROUP_A)):
        cut_at = time.monotonic()
        at_cut = max(got(h) for h in GROUP_B)
        for host in GROUP_A:  # the group that still reaches the origin is not held up
            finish(pulls[host])
        assert all(pulls[h].poll() is None for h in GROUP_B), "B finished without the origin"
        hold_until_swarms_gave_up(services, GROUP_B, digest, cut_at)  # the partition's length
    assert at_cut < BLOB_SIZE, "the partition came after B had the whole blob"
    for host in GROUP_B:
        finish(pulls[host])
    assert_everyone_has_it(work, tmp_path, digest)


def test_a_group_cut_from_the_rest_but_not_the_origin_finishes_during_the_partition(
    net: Cluster, services: KrillServices, work: Path, tmp_path: Path
) -> None:
    digest, got, pulls = start_pulls(net, services, tmp_path)
    until_sync(lambda: all(got(h) > 0 for h in HOSTS), "every agent's first bytes", interval=0.1)
    with net.cut(GROUP_B, GROUP_A):
        at_cut = max(got(h) for h in HOSTS)
        for host in HOSTS:
            finish(pulls[host])
    assert at_cut < BLOB_SIZE, "the partition came after an agent had the whole blob"
    assert_everyone_has_it(work, tmp_path, digest)
