"""A network partition in the middle of a pull, healed: the pull completes, byte-exact.

Three network namespaces on one bridge (``tests/netns.py``), links shaped to
20 Mbit/s so a 16 MiB blob takes seconds to cross: h0 runs origin and
tracker, h1 and h2 an agent each. Both agents pull the blob at once. Once
h1 has received its first bytes, its switch port goes down: h1 is cut off
from h0 and h2, while both keep running. h2's pull carries on and completes
during the partition. After ``PARTITION_SECONDS`` the port comes back up
and h1's pull completes with exactly the blob. The time is the fault's
length, not a wait for something to happen. It is longer than the
swarm's request timeouts and shorter than the agent's stall timeout.

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

from tests.netns import Cluster, finish, krill_services, received, sha256_file
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

BLOB_SIZE = 16 * 1024 * 1024
RATE_MBIT = 20.0
PARTITION_SECONDS = 8.0
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
            at_cut = received(net, CUT_OFF)
            finish(pulls[OTHER])  # the rest of the cluster is not held up by h1
            time.sleep(PARTITION_SECONDS)  # the partition's length (see the module doc)
        assert at_cut < BLOB_SIZE, "the partition came after h1 had the whole blob"
        finish(pulls[CUT_OFF])
    assert sha256_file(tmp_path / f"pulled{OTHER}") == digest
    assert sha256_file(tmp_path / f"pulled{CUT_OFF}") == digest
