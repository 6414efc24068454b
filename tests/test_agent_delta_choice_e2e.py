"""Delta or full, by the clock, on a shaped link: the same agent takes the full layer while
its measured link is fast and the delta once the link is slow.

Two network namespaces on a bridge (``tests/netns.py``): h0 runs a real origin (with
its tracker, so it serves every blob's metainfo), h1 a real agent (default
``delta_policy``, "fastest"; no tracker, so every blob comes over the origin's HTTP
API and every download is a rate sample). The big layer is ~10 MB of tar, ~2.9 MB
of gzip; its delta is a few KB, and before it has rebuilt anything the agent reckons
a gzip rebuild at its default rate (``DEFAULT_REBUILD_RATES``: 40 MB/s of tar on one
core, 53 MB/s on two): ~0.2 s. With one sample of the same size, the full layer wins
while that download took less than the reckoned rebuild, the delta once it takes more.

1. Link unshaped (a veth: hundreds of MB/s). The agent pulls v1 (its big layer is
   the first rate sample: ~20 ms, ten times under 0.2 s), then v2: the full layer,
   reason ``full_faster``.
2. Both directions of h1's link shaped to 5 Mbit/s with ``tc tbf``. The agent pulls
   one 1.25 MiB blob, a real download that moves its measured rate down, then v3: the
   delta, reason ``delta_faster``, rebuilt from v2's layer and served while rebuilt.

One slow sample is enough, whatever the fast ones measured: the estimate is a moving
average of seconds per byte with the newest sample weighing ``SMOOTHING`` (0.4), so
even after infinitely fast samples it ends at most ~0.7 MB/s / 0.4 = ~1.8 MB/s, and the
full layer reckoned at 1.6 s, eight times the rebuild. The text compresses ~3.6x so
that both margins are wide at once: the fast one needs the layer small next to its
tar, the slow one needs it big next to what the slow link moves. v3 is pushed (from
h0, untouched by the shaping) right after v2, so the origin computes its two deltas
while the agent pulls v2 and the slow blob (the slow blob's ~1.9 s hide behind them).

Nothing here reads or moves the agent's clock: the rates are what the agent measured
on the link. Every blob pulled is checked against its digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from krill.agent.deltachoice import MIN_SAMPLE_BYTES
from krill.processes import logged_process
from tests.components import krill_command
from tests.imagebuild import Image, build_image, random_files
from tests.metrics_text import parse_metrics
from tests.netns import Cluster, in_ns, shape
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

ORIGIN, NODE = 0, 1
REPOSITORY = "team/app"
FILLERS = "team/filler"
SLOW_MBIT = 5.0
# The blob pulled over the slow link: over MIN_SAMPLE_BYTES (1 MiB, the smallest download
# the agent counts as a rate sample) by a quarter, so that tbf's 128 KiB burst (sent at
# once) leaves the measured rate within ~10 % of the link's.
SLOW_SAMPLE_BYTES = MIN_SAMPLE_BYTES + (256 << 10)
AGENT_API, AGENT_REGISTRY = "http://127.0.0.1:7400", "http://127.0.0.1:7401"
CHOICE = "krill_agent_delta_choice_total"


def _text_tree(seed: int) -> dict[str, bytes]:
    """~10 MB of text in 120 files that gzip ~3.6x (a vocabulary of 1,000 hex words).

    Big enough that the reckoned rebuild (~0.2 s) is ten times the unshaped download
    of its ~2.9 MB of gzip; twice this (it was 240 files) only made the origin's three
    deltas and the image builds take twice as long.
    """
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 6)).hex() for _ in range(1000)]
    return {
        f"usr/share/pkg{i:03d}/data.txt": "\n".join(
            " ".join(rng.choices(words, k=12)) for _ in range(800)
        ).encode()
        for i in range(120)
    }


def _next_version(files: dict[str, bytes], version: int) -> dict[str, bytes]:
    """A few files changed, one added: what a rebuilt application layer looks like."""
    out = dict(files)
    names = sorted(out)
    out[names[version * 7]] = out[names[version * 7]][:5000] + f"v{version}".encode()
    out["etc/krill-release"] = f"VERSION={version}\n".encode()
    return out


@dataclass(frozen=True)
class Versions:
    images: tuple[Image, Image, Image]

    def big(self, version: int) -> str:
        """The digest of version ``version``'s (1-based) big layer."""
        return self.images[version - 1].layers[1].digest


@pytest.fixture(scope="module")
def versions() -> Versions:
    runtime = random_files(31, count=2, size=64 * 1024)
    v1 = _text_tree(32)
    v2 = _next_version(v1, 2)
    v3 = _next_version(v2, 3)
    return Versions(
        (build_image([runtime, v1]), build_image([runtime, v2]), build_image([runtime, v3]))
    )


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    net = Cluster(prefix=f"kdc{os.getpid()}-", subnet="10.81.0")
    try:
        net.build(hosts=2)  # unshaped until the test slows h1's link down
        yield net
    finally:
        net.remove()


class Node:
    """The test's hands on the two hosts: push to the origin, pull through the agent."""

    def __init__(self, net: Cluster, root: Path) -> None:
        self.net, self.root = net, root
        self.origin = f"http://{net.ip(ORIGIN)}:5000"

    def push(self, image: Image, tag: str) -> None:
        for blob in image.blobs():
            self.push_blob(REPOSITORY, blob.data)
        manifest = self._file(image.manifest.data)
        self.net.push_manifest(
            ORIGIN, self.origin, REPOSITORY, tag, manifest, image.manifest.media_type
        )

    def push_blob(self, repository: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.net.push_blob(ORIGIN, self.origin, repository, self._file(data), digest)
        return digest

    def pull(self, image: Image, tag: str) -> None:
        """What containerd does: the manifest by tag, then the config and every layer."""
        media_type = image.manifest.media_type
        self.net.run(
            NODE, "curl", "-sS", "-f", "-o", "/dev/null", "-H", f"Accept: {media_type}",
            f"{AGENT_REGISTRY}/v2/{REPOSITORY}/manifests/{tag}",
        )  # fmt: skip
        for blob in image.blobs():
            self.pull_blob(REPOSITORY, blob.digest)

    def pull_blob(self, repository: str, digest: str) -> None:
        out = self.root / "pulled"
        self.net.run(
            NODE, "curl", "-sS", "-f", "-o", str(out),
            f"{AGENT_REGISTRY}/v2/{repository}/blobs/{digest}",
        )  # fmt: skip
        assert "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest() == digest

    def wait_for_delta(self, target: str, bases: str) -> dict:
        return self.net.wait_for_delta(ORIGIN, self.origin, target, bases)

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.net.run(NODE, "curl", "-sS", "-f", f"{AGENT_API}/metrics").stdout)

    def choices(self) -> list[str]:
        """The agent's ``delta.choice`` log lines so far."""
        log = (self.root / "agent.log").read_text()
        return [line for line in log.splitlines() if "delta.choice" in line]

    def _file(self, data: bytes) -> Path:
        path = self.root / "push" / hashlib.sha256(data).hexdigest()
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        return path


@contextlib.contextmanager
def origin_and_agent(net: Cluster, root: Path) -> Iterator[Node]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    node = Node(net, root)
    config = root / "agent.toml"
    config.write_text('delta_policy = "fastest"\n')
    tracker_url = f"http://{net.ip(ORIGIN)}:7000"
    tracker = ["tracker", "--listen", f"{net.ip(ORIGIN)}:7000", "--origin", node.origin]
    # --tracker: the origin then serves every blob's metainfo, which a streamed rebuild
    # checks its pieces against (the agent itself has no tracker: no swarm, HTTP only).
    origin = [
        "origin", "--listen", f"{net.ip(ORIGIN)}:5000", "--data", str(root / "origin"),
        "--tracker", tracker_url,
    ]  # fmt: skip
    agent = [
        "agent", "--listen", "127.0.0.1:7400", "--registry-listen", "127.0.0.1:7401",
        "--data", str(root / "agent"), "--origin", node.origin, "--config", str(config),
    ]  # fmt: skip
    # All three start at once (the agent needs no origin to come up, only to pull), so
    # their interpreters load side by side; each is waited for before the first push.
    with contextlib.ExitStack() as stack:
        for ns, name, words in (
            (ORIGIN, "tracker", tracker), (ORIGIN, "origin", origin), (NODE, "agent", agent)
        ):
            stack.enter_context(logged_process(
                in_ns(net.ns(ns), *krill_command(*words)), root / f"{name}.log",
                grace=10, env=env,
            ))  # fmt: skip
        net.wait_http(ORIGIN, f"{tracker_url}/health")
        net.wait_http(ORIGIN, f"{node.origin}/v2/")
        net.wait_http(NODE, f"{AGENT_API}/health")
        yield node


def _count(metrics: dict[str, float], name: str) -> float:
    return metrics.get(name, 0.0)


def test_a_fast_link_takes_the_full_layer_and_a_slow_one_the_delta(
    cluster: Cluster, tmp_path: Path, versions: Versions
) -> None:
    v1, v2, v3 = versions.images
    with origin_and_agent(cluster, tmp_path) as node:
        node.push(v1, "1")
        node.pull(v1, "1")
        node.push(v2, "2")
        # v3 now, so the origin computes its deltas (queued after v1 -> v2) while the agent
        # pulls v2 and the slow blob; the agent pulls v3 only once its link is slow.
        node.push(v3, "3")
        node.wait_for_delta(versions.big(2), versions.big(1))

        node.pull(v2, "2")
        fast = node.metrics()
        assert _count(fast, f'{CHOICE}{{choice="full",reason="full_faster"}}') == 1, node.choices()
        assert _count(fast, "krill_agent_delta_hits_total") == 0
        http = fast["krill_agent_origin_http_bytes_total"]
        assert http >= len(v1.layers[1].data) + len(v2.layers[1].data)  # both came whole

        # The link slows to 5 Mbit/s both ways; one download shows the agent.
        shape(cluster.ns(NODE), "eth0", SLOW_MBIT)
        shape(cluster.switch, f"p{NODE}", SLOW_MBIT)
        filler = random.Random(0).randbytes(SLOW_SAMPLE_BYTES)
        node.pull_blob(FILLERS, node.push_blob(FILLERS, filler))
        for base in (versions.big(2), versions.big(1)):  # both may be offered: the smaller wins
            node.wait_for_delta(versions.big(3), base)
        delta = node.wait_for_delta(versions.big(3), f"{versions.big(2)},{versions.big(1)}")

        node.pull(v3, "3")
        served = 'krill_agent_served_bytes_total{source="delta"}'
        with contextlib.suppress(AssertionError):  # the assertion below says what went wrong
            until_sync(  # counted once the last run's sendfile returns, maybe after the pull
                lambda: node.metrics().get(served, 0) >= len(v3.layers[1].data),
                "the rebuilt layer counted as served", within=10,
            )
        slow = node.metrics()
        choices = node.choices()
        assert _count(slow, f'{CHOICE}{{choice="delta",reason="delta_faster"}}') == 1, choices
        assert _count(slow, "krill_agent_delta_hits_total") == 1, choices
        assert _count(slow, f'{CHOICE}{{choice="full",reason="full_faster"}}') == 1
        # What crossed the link for v3's big layer: the delta, not the layer.
        crossed = slow["krill_agent_origin_http_bytes_total"] - http
        assert crossed == SLOW_SAMPLE_BYTES + len(v3.config.data) + delta["size"], (crossed, delta)
        saved = slow["krill_agent_delta_bytes_saved_total"]
        assert saved == len(v3.layers[1].data) - delta["size"]
        # Served while rebuilt (agent.rebuildstream): the bytes count as the delta's, not
        # the cache's, and the origin's metainfo was there to check the pieces against.
        assert slow[served] == len(v3.layers[1].data)
        log = (tmp_path / "agent.log").read_text()
        assert "delta.not_streamed" not in log
    first = slow['krill_agent_pull_first_byte_seconds_sum{source="delta"}']
    last = slow['krill_agent_pull_seconds_sum{source="delta"}']
    hit = [line for line in log.splitlines() if "delta.hit" in line]
    print("\n".join([*choices, *hit, f"delta pull: first byte {first:.3f} s, last {last:.3f} s"]))
