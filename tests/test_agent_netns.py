"""The README's own commands, run on separate hosts, form a swarm (issue 16).

Three network namespaces joined by a bridge (``tests/netns.py``), links
shaped to 100 Mbit/s: h0 runs the README's origin and tracker, h1 and h2
each run the README's ``krill agent`` command, taken from README.md
("Running a cluster") and changed only in its addresses and data
directory. Both nodes pull one blob through their registry endpoint at
once. Before the peer port listened on every interface by default, each
agent's swarm was bound to its loopback: no peer could reach it, and the
pulls came from the origin (or failed). Here the agents must trade pieces:
each served the whole blob from the swarm, the agents uploaded to each
other, and the origin sent less than two copies.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from krill.processes import logged_process
from tests.components import krill_command
from tests.metrics_text import parse_metrics
from tests.netns import Cluster, in_ns

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("ip", "tc", "curl")),
        reason="needs ip, tc (iproute2) and curl",
    ),
]

README = Path(__file__).resolve().parent.parent / "README.md"
BLOB_SIZE = 16 * 1024 * 1024
REPOSITORY = "netns/app"
ORIGIN_HOST, AGENT_HOSTS = 0, (1, 2)


def readme_command(service: str) -> list[str]:
    """The ``krill SERVICE ...`` command of README's "Running a cluster", as words."""
    text = README.read_text()
    section = text.split("## Running a cluster", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    joined = section.replace("\\\n", " ")
    for line in joined.splitlines():
        words = shlex.split(line.split("#", 1)[0])
        if words[:2] == ["krill", service] and (len(words) < 3 or words[2].startswith("-")):
            # "[--redis URL]" is optional: leave it out.
            return [w for w in re.sub(r"\[[^]]*\]", "", " ".join(words)).split()]
    raise AssertionError(f"README.md 'Running a cluster' has no `krill {service}` command")


def readdressed(words: list[str], addresses: dict[str, str]) -> list[str]:
    """``words`` with each README address or path replaced (and nothing else)."""
    out = []
    for word in words:
        for old, new in addresses.items():
            word = word.replace(old, new)
        out.append(word)
    return out


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """Three hosts on one bridge, 100 Mbit/s links; every namespace removed at the end."""
    net = Cluster(prefix=f"krt{os.getpid()}-", subnet="10.78.0")
    try:
        net.build(hosts=3, rate_mbit=100.0, mtu=1500)
        yield net
    finally:
        net.remove()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _agent_metrics(net: Cluster, host: int) -> dict[str, float]:
    text = net.run(host, "curl", "-sS", "-f", "http://127.0.0.1:7400/metrics").stdout
    return parse_metrics(text)


def test_the_readme_agent_command_on_two_hosts_forms_a_swarm(
    cluster: Cluster, tmp_path: Path
) -> None:
    server_ip = cluster.ip(ORIGIN_HOST)
    addresses = {
        "http://tracker:7000": f"http://{server_ip}:7000",
        "http://origin:5000": f"http://{server_ip}:5000",
    }
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    commands = {
        "tracker": readdressed(readme_command("tracker"), addresses),
        "origin": readdressed(
            readme_command("origin"),
            {**addresses, "/var/lib/krill/origin": str(tmp_path / "origin")},
        ),
    }
    agent_words = readme_command("agent")
    assert agent_words[:2] == ["krill", "agent"]
    with contextlib.ExitStack() as stack:
        for name, words in commands.items():
            stack.enter_context(logged_process(
                in_ns(cluster.ns(ORIGIN_HOST), *krill_command(*words[1:])),
                tmp_path / f"{name}.log", grace=10, env=env,
            ))
        cluster.wait_http(ORIGIN_HOST, f"http://{server_ip}:7000/health")
        cluster.wait_http(ORIGIN_HOST, f"http://{server_ip}:5000/v2/")
        for host in AGENT_HOSTS:
            words = readdressed(
                agent_words, {**addresses, "/var/lib/krill/agent": str(tmp_path / f"agent{host}")}
            )
            stack.enter_context(logged_process(
                in_ns(cluster.ns(host), *krill_command(*words[1:])),
                tmp_path / f"agent{host}.log", grace=10, env=env,
            ))
        for host in AGENT_HOSTS:
            cluster.wait_http(host, "http://127.0.0.1:7400/health")

        blob = tmp_path / "blob"
        blob.write_bytes(os.urandom(BLOB_SIZE))
        digest = _sha256(blob)
        cluster.push_blob(ORIGIN_HOST, f"http://{server_ip}:5000", REPOSITORY, blob, digest)
        sent_before = cluster.tx_bytes(ORIGIN_HOST)

        # Both nodes pull at once, through their registry endpoints, as containerd would.
        pulls = [
            subprocess.Popen(
                in_ns(cluster.ns(host), "curl", "-sS", "-f", "-o", str(tmp_path / f"pulled{host}"),
                      f"http://127.0.0.1:7401/v2/{REPOSITORY}/blobs/{digest}"),
                stderr=subprocess.PIPE, text=True,
            )
            for host in AGENT_HOSTS
        ]
        for pull in pulls:
            _, stderr = pull.communicate(timeout=120)
            assert pull.returncode == 0, stderr
        origin_egress = cluster.tx_bytes(ORIGIN_HOST) - sent_before
        metrics = {host: _agent_metrics(cluster, host) for host in AGENT_HOSTS}

    logs = {host: (tmp_path / f"agent{host}.log").read_text() for host in AGENT_HOSTS}
    for host in AGENT_HOSTS:
        assert _sha256(tmp_path / f"pulled{host}") == digest
        assert metrics[host]['krill_agent_served_bytes_total{source="swarm"}'] == BLOB_SIZE, (
            f"agent{host} did not serve the blob from the swarm:\n{logs[host][-3000:]}"
        )
    uploaded = {
        host: metrics[host]['krill_agent_swarm_payload_bytes{direction="uploaded"}']
        for host in AGENT_HOSTS
    }
    # Only agents download, so what an agent uploaded went to the other agent.
    assert sum(uploaded.values()) > 0, f"the agents traded nothing: {uploaded}"
    assert origin_egress < 2 * BLOB_SIZE, f"the origin sent {origin_egress / BLOB_SIZE:.2f} copies"
    for host in AGENT_HOSTS:
        assert "swarm.peer_port_unreachable" not in logs[host]
        assert metrics[host]["krill_agent_swarm_unreachable_downloads"] == 0
