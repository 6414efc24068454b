"""A network partition in the middle of a pull, healed: the pull completes, byte-exact.

Three network namespaces on one bridge (``tests/netns.py``), links shaped to
20 Mbit/s so a 32 MiB blob takes seconds to cross: h0 runs origin and
tracker, h1 and h2 an agent each. Both agents pull the blob at once. Once
h1 has received its first bytes, its switch port goes down: h1 is cut off
from h0 and h2, while both keep running. h2's pull carries on and completes
during the partition. After ``PARTITION_SECONDS`` the port comes back up
and h1's pull completes with exactly the blob. The time is the fault's
length, not a wait for something to happen. It is longer than the
swarm's request timeouts and shorter than the agent's stall timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from krill.processes import logged_process
from tests.components import krill_command
from tests.metrics_text import parse_metrics
from tests.netns import Cluster, in_ns, sh
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

BLOB_SIZE = 32 * 1024 * 1024
RATE_MBIT = 20.0
PARTITION_SECONDS = 8.0
REPOSITORY = "netns/app"
SERVER, CUT_OFF, OTHER = 0, 1, 2
AGENT_CONFIG = "stall_timeout = 120.0\nswarm_deadline = 30.0\norigin_timeout = 30.0\n"


@pytest.fixture
def net() -> Iterator[Cluster]:
    cluster = Cluster(prefix=f"kfp{os.getpid()}-", subnet="10.79.0")
    try:
        cluster.build(hosts=3, rate_mbit=RATE_MBIT, mtu=1500)
        yield cluster
    finally:
        cluster.remove()


@contextlib.contextmanager
def services(net: Cluster, work: Path) -> Iterator[None]:
    server = net.ip(SERVER)
    origin, tracker = f"http://{server}:5000", f"http://{server}:7000"
    (work / "agent.toml").write_text(AGENT_CONFIG)
    commands = {
        "tracker": (SERVER, ["tracker", "--listen", "0.0.0.0:7000", "--origin", origin]),
        "origin": (SERVER, ["origin", "--listen", "0.0.0.0:5000", "--data",
                            str(work / "origin"), "--tracker", tracker]),
    }  # fmt: skip
    for host in (CUT_OFF, OTHER):
        commands[f"agent{host}"] = (host, [
            "agent", "--listen", "127.0.0.1:7400", "--registry-listen", "127.0.0.1:7401",
            "--data", str(work / f"agent{host}"), "--origin", origin, "--tracker", tracker,
            "--config", str(work / "agent.toml"),
        ])  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with contextlib.ExitStack() as stack:
        for name, (host, args) in commands.items():
            command = in_ns(net.ns(host), *krill_command(*args))
            stack.enter_context(logged_process(command, work / f"{name}.log", grace=10, env=env))
            if name == "origin":
                net.wait_http(SERVER, f"{tracker}/health")
                net.wait_http(SERVER, f"{origin}/v2/")
        for host in (CUT_OFF, OTHER):
            net.wait_http(host, "http://127.0.0.1:7400/health")
        yield


def received(net: Cluster, host: int) -> float:
    """Blob bytes the agent on ``host`` has received, from peers, the origin's piece
    feed or its HTTP fallback."""
    text = net.run(host, "curl", "-sS", "-f", "http://127.0.0.1:7400/metrics").stdout
    metrics = parse_metrics(text)
    return (
        metrics.get('krill_agent_swarm_payload_bytes{direction="downloaded"}', 0.0)
        + metrics.get("krill_agent_swarm_origin_feed_bytes", 0.0)
        + metrics.get("krill_agent_origin_http_bytes_total", 0.0)
    )


def start_pull(net: Cluster, host: int, digest: str, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        in_ns(net.ns(host), "curl", "-sS", "-f", "-o", str(out),
              f"http://127.0.0.1:7401/v2/{REPOSITORY}/blobs/{digest}"),
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(pull: subprocess.Popen[str]) -> None:
    _, stderr = pull.communicate(timeout=300)
    assert pull.returncode == 0, stderr


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def partitioned(net: Cluster, host: int) -> Iterator[None]:
    """``host``'s switch port down for the block: unplugged, its own interface still up."""
    port = f"p{host}"
    sh(*in_ns(net.switch, "ip", "link", "set", port, "down"))
    try:
        yield
    finally:
        sh(*in_ns(net.switch, "ip", "link", "set", port, "up"))


def test_a_node_partitioned_mid_pull_completes_after_the_heal_and_the_rest_carry_on(
    net: Cluster, tmp_path: Path
) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(BLOB_SIZE))
    digest = sha256_file(blob)
    with services(net, tmp_path):
        net.push_blob(SERVER, f"http://{net.ip(SERVER)}:5000", REPOSITORY, blob, digest)
        pulls = {h: start_pull(net, h, digest, tmp_path / f"pulled{h}") for h in (CUT_OFF, OTHER)}
        until_sync(lambda: received(net, CUT_OFF) > 0, "h1's first bytes", interval=0.1)
        with partitioned(net, CUT_OFF):
            at_cut = received(net, CUT_OFF)
            finish(pulls[OTHER])  # the rest of the cluster is not held up by h1
            time.sleep(PARTITION_SECONDS)  # the partition's length (see the module doc)
        assert at_cut < BLOB_SIZE, "the partition came after h1 had the whole blob"
        finish(pulls[CUT_OFF])
    assert sha256_file(tmp_path / f"pulled{OTHER}") == digest
    assert sha256_file(tmp_path / f"pulled{CUT_OFF}") == digest
