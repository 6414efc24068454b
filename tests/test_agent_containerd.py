"""A real containerd pulls through the agent (hosts.toml from `krill agent containerd-config`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import containerd
from tests.agent_cluster import agent_process, build_layout, origin_process, push
from tests.components import docker_registry, krill_command

pytestmark = pytest.mark.skipif(
    not containerd.available(), reason="containerd and ctr are required (scripts/test installs)"
)


def write_hosts(hosts_dir: Path, agent_hostport: str, *registries: str) -> None:
    """Run the real CLI: `krill agent containerd-config`."""
    args = ["agent", "containerd-config", "--agent", agent_hostport, "--dir", str(hosts_dir)]
    for registry in registries:
        args += ["--registry", registry]
    subprocess.run(krill_command(*args), check=True, capture_output=True)


def test_containerd_pulls_a_multi_platform_index_through_the_agent(tmp_path: Path) -> None:
    with origin_process(tmp_path / "origin") as origin:
        image = build_layout(tmp_path / "layout", seed=3, platforms=("amd64", "arm64"))
        host = origin.removeprefix("http://")
        push(image, origin, "team/app:1")
        with (
            agent_process(tmp_path / "agent", origin) as agent,
            containerd.running_containerd(tmp_path / "ctrd") as ctrd,
        ):
            hosts = tmp_path / "hosts"
            write_hosts(hosts, agent.registry_hostport, f"{host}=http://{host}")
            reference = f"{host}/team/app:1"
            ctrd.pull(reference, hosts, platforms=["linux/amd64"])
            assert ctrd.image_digest(reference) == image.top.digest
            assert ctrd.snapshots(), "the image was not unpacked"
            ctrd.pull(reference, hosts, all_platforms=True)
            served = agent.metrics()
        assert served.get('krill_agent_served_bytes_total{source="origin"}', 0) + served.get(
            'krill_agent_served_bytes_total{source="swarm"}', 0
        ) + served.get('krill_agent_served_bytes_total{source="cache"}', 0) > 0
