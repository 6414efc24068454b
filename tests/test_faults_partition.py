"""A network partition in the middle of a pull, healed: the pull completes, byte-exact.

Three network namespaces on one bridge (``tests/netns.py``), links shaped to
48 Mbit/s so an 8 MiB blob takes seconds to cross: h0 runs origin and
tracker, h1 and h2 an agent each. Both agents pull the blob at once. Once
h1 has received its first bytes, its switch port goes down: h1 is cut off
from h0 and h2, while both keep running. h2's pull carries on and completes
during the partition. The port comes back up 10 s after the cut, once h1's
swarm has given up on the origin (``swarm.origin_claims_failed`` in its
log: its request to the origin's piece feed, in flight at the cut, timed
out), 12 s at most (``netns.hold_until_swarms_gave_up``), and h1's pull
completes with exactly the blob. That length is the fault's, not a wait for
the pull: longer than the swarm's request timeouts (the piece feed's 10 s
read timeout, ``krill.piecefeed``; libtorrent's request and piece timeouts
to peers, ``krill.swarm.settings``, are no longer), so h1 recovers through
the swarm's own retries (origin fills, peers again) rather than TCP
retransmitting across a hiccup; and far shorter than the agent's stall
timeout (120 s, ``AGENT_CONFIG`` in ``tests/netns.py``), after which h1's
agent would abort the pull rather than wait for the network.

The cluster, its services and the pull helpers are ``tests/netns.py``'s, shared
with the partition between two groups of nodes
(``tests/test_faults_partition_groups.py``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import (
    Cluster,
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
        not all(shutil.which(tool) for tool in ("ip", "tc", "curl")),
        reason="needs ip, tc (iproute2) and curl",
    ),
]

BLOB_SIZE = 8 * 1024 * 1024
RATE_MBIT = 48.0
SERVER, CUT_OFF, OTHER = 0, 1, 2


@pytest.fixture
def net() -> Iterator[Cluster]:
    cluster = Cluster(prefix=f"kfp{os.getpid()}-", subnet="10.79.0")
    try:
        cluster.build(hosts=3, rate_mbit=RATE_MBIT, mtu=1500)
        yield cluster
    finally:
        cluster.remove()


def test_a_node_partitioned_mid_pull_completes_after_the_heal_and_the_rest_carry_on(
    net: Cluster, tmp_path: Path
) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(BLOB_SIZE))
    digest = sha256_file(blob)
    with krill_services(net, SERVER, [CUT_OFF, OTHER], tmp_path) as cluster:
        cluster.push(blob, digest)
        pulls = {h: cluster.pull(h, digest, tmp_path / f"pulled{h}") for h in (CUT_OFF, OTHER)}
        until_sync(lambda: received(net, CUT_OFF) > 0, "h1's first bytes", interval=0.1)
        with net.unplugged(CUT_OFF):
            cut_at = time.monotonic()
            at_cut = received(net, CUT_OFF)
            finish(pulls[OTHER])  # the rest of the cluster is not held up by h1
            # The partition's length (see the module doc).
            hold_until_swarms_gave_up(cluster, [CUT_OFF], digest, cut_at)
        assert at_cut < BLOB_SIZE, "the partition came after h1 had the whole blob"
        finish(pulls[CUT_OFF])
    assert sha256_file(tmp_path / f"pulled{OTHER}") == digest
    assert sha256_file(tmp_path / f"pulled{CUT_OFF}") == digest
