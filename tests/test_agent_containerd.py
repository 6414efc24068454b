"""A real containerd pulls through the agent (hosts.toml from `krill agent containerd-config`)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from krill.blobstore import BlobStore
from krill.digests import Digest
from tests import containerd
from tests.agent_cluster import (
    Agent,
    agent_process,
    build_layout,
    origin_and_tracker,
    origin_process,
    push,
)
from tests.components import krill_command


def write_hosts(hosts_dir: Path, agent_hostport: str, *registries: str) -> None:
    """Run the real CLI: `krill agent containerd-config`."""
    args = ["agent", "containerd-config", "--agent", agent_hostport, "--dir", str(hosts_dir)]
    for registry in registries:
        args += ["--registry", registry]
    subprocess.run(krill_command(*args), check=True, capture_output=True)


@contextlib.contextmanager
def containerd_through(
    tmp_path: Path, agent: Agent, origin: str
) -> Iterator[tuple[containerd.Containerd, Path]]:
    """A containerd whose hosts.toml sends pulls from ``origin`` to ``agent``.

    Yields (containerd, hosts dir); references name the origin's host.
    """
    host = origin.removeprefix("http://")
    with containerd.running_containerd(tmp_path / "ctrd") as ctrd:
        hosts = tmp_path / "hosts"
        write_hosts(hosts, agent.registry_hostport, f"{host}=http://{host}")
        yield ctrd, hosts


def test_containerd_pulls_a_multi_platform_index_through_the_agent(tmp_path: Path) -> None:
    """Swarm path: a seeding origin and a tracker; containerd resolves and fetches via the agent."""
    with origin_and_tracker(tmp_path) as (origin_url, tracker_url):
        image = build_layout(tmp_path / "layout", seed=3, platforms=("amd64", "arm64"))
        host = origin_url.removeprefix("http://")
        push(image, origin_url, "team/app:1")
        with (
            agent_process(
                tmp_path / "agent", origin_url, tracker_url, settings={"swarm_deadline": 20.0}
            ) as agent,
            containerd_through(tmp_path, agent, origin_url) as (ctrd, hosts),
        ):
            reference = f"{host}/team/app:1"
            ctrd.pull(reference, hosts, platforms=["linux/amd64"])
            assert ctrd.image_digest(reference) == image.top.digest
            assert ctrd.snapshots(), "the image was not unpacked"
            ctrd.pull(reference, hosts, all_platforms=True)
            served = agent.metrics()
        all_blobs = {b.digest for img in image.images for b in img.blobs()}
        stored = {d for d in all_blobs if BlobStore(agent.data / "blobs").has(Digest.parse(d))}
        assert stored == all_blobs  # every layer and config of both platforms came through
        assert served.get('krill_agent_served_bytes_total{source="swarm"}', 0) > 0
        assert served.get("krill_agent_origin_http_bytes_total", 0) == 0


def test_containerd_pulls_through_the_agent_without_a_swarm(tmp_path: Path) -> None:
    """HTTP path: no tracker; the agent fetches from the origin's registry API."""
    with origin_process(tmp_path / "origin") as origin:
        image = build_layout(tmp_path / "layout", seed=4)
        host = origin.removeprefix("http://")
        push(image, origin, "team/plain:1")
        with (
            agent_process(tmp_path / "agent", origin) as agent,
            containerd_through(tmp_path, agent, origin) as (ctrd, hosts),
        ):
            reference = f"{host}/team/plain:1"
            ctrd.pull(reference, hosts)
            assert ctrd.image_digest(reference) == image.top.digest
            served = agent.metrics()
        blobs = sum(len(b.data) for b in image.images[0].blobs())
        assert served["krill_agent_origin_http_bytes_total"] == blobs
