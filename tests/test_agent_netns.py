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
other, and the origin sent less than two copies. And a node whose peer port
a firewall closes says so (``swarm.peer_port_unreachable``, a metric).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from krill.processes import logged_process
from tests.components import krill_command
from tests.metrics_text import parse_metrics
from tests.netns import Cluster, in_ns
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
def cluster() -> Iterator[Callable[[float], Cluster]]:
    """Builds three hosts on one bridge with links of the given rate (Mbit/s); every
    namespace is removed at the end, whatever happened."""
    net = Cluster(prefix=f"krt{os.getpid()}-", subnet="10.78.0")

    def build(rate_mbit: float) -> Cluster:
        net.build(hosts=3, rate_mbit=rate_mbit, mtu=1500)
        return net

    try:
        yield build
    finally:
        net.remove()


@contextlib.contextmanager
def readme_services(
    net: Cluster, work: Path, agent_env: dict[int, dict[str, str]] | None = None
) -> Iterator[None]:
    """README's tracker and origin on h0, README's agent on h1 and h2, until the block ends.

    ``agent_env``: settings for one host's agent, in the environment (the command stays
    the README's)."""
    server_ip = net.ip(ORIGIN_HOST)
    addresses = {
        "http://tracker:7000": f"http://{server_ip}:7000",
        "http://origin:5000": f"http://{server_ip}:5000",
    }
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    services = {
        "tracker": (ORIGIN_HOST, readdressed(readme_command("tracker"), addresses)),
        "origin": (ORIGIN_HOST, readdressed(
            readme_command("origin"), {**addresses, "/var/lib/krill/origin": str(work / "origin")}
        )),
    }
    for host in AGENT_HOSTS:
        data = {**addresses, "/var/lib/krill/agent": str(work / f"agent{host}")}
        services[f"agent{host}"] = (host, readdressed(readme_command("agent"), data))
    with contextlib.ExitStack() as stack:
        for name, (host, words) in services.items():
            assert words[0] == "krill"
            extra = (agent_env or {}).get(host, {}) if name.startswith("agent") else {}
            stack.enter_context(logged_process(
                in_ns(net.ns(host), *krill_command(*words[1:])), work / f"{name}.log",
                grace=10, env={**env, **extra},
            ))
            if name == "origin":  # the agents need both servers up
                net.wait_http(ORIGIN_HOST, f"http://{server_ip}:7000/health")
                net.wait_http(ORIGIN_HOST, f"http://{server_ip}:5000/v2/")
        for host in AGENT_HOSTS:
            net.wait_http(host, "http://127.0.0.1:7400/health")
        yield


def push_random_blob(net: Cluster, work: Path) -> str:
    blob = work / "blob"
    blob.write_bytes(os.urandom(BLOB_SIZE))
    digest = _sha256(blob)
    net.push_blob(ORIGIN_HOST, f"http://{net.ip(ORIGIN_HOST)}:5000", REPOSITORY, blob, digest)
    return digest


def start_pull(net: Cluster, host: int, digest: str, work: Path) -> subprocess.Popen[str]:
    """GET the blob from the node's registry endpoint, as containerd would (curl)."""
    return subprocess.Popen(
        in_ns(net.ns(host), "curl", "-sS", "-f", "-o", str(work / f"pulled{host}"),
              f"http://127.0.0.1:7401/v2/{REPOSITORY}/blobs/{digest}"),
        stderr=subprocess.PIPE, text=True,
    )


def finish_pull(pull: subprocess.Popen[str]) -> None:
    _, stderr = pull.communicate(timeout=180)
    assert pull.returncode == 0, stderr


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _metrics(net: Cluster, host: int, url: str = "http://127.0.0.1:7400") -> dict[str, float]:
    return parse_metrics(net.run(host, "curl", "-sS", "-f", f"{url}/metrics").stdout)


def test_the_readme_agent_command_on_two_hosts_forms_a_swarm(
    cluster: Callable[[float], Cluster], tmp_path: Path
) -> None:
    net = cluster(100.0)
    with readme_services(net, tmp_path):
        digest = push_random_blob(net, tmp_path)
        sent_before = net.tx_bytes(ORIGIN_HOST)
        # Both nodes pull at once, through their registry endpoints.
        for pull in [start_pull(net, host, digest, tmp_path) for host in AGENT_HOSTS]:
            finish_pull(pull)
        origin_egress = net.tx_bytes(ORIGIN_HOST) - sent_before
        served = 'krill_agent_served_bytes_total{source="swarm"}'
        with contextlib.suppress(AssertionError):  # the assertion below says what went wrong
            # Counted once the last run's sendfile returns, which may be after curl's exit.
            until_sync(
                lambda: all(_metrics(net, h).get(served) == BLOB_SIZE for h in AGENT_HOSTS),
                "both agents counting the blob as served", within=10,
            )
        metrics = {host: _metrics(net, host) for host in AGENT_HOSTS}

    logs = {host: (tmp_path / f"agent{host}.log").read_text() for host in AGENT_HOSTS}
    for host in AGENT_HOSTS:
        assert _sha256(tmp_path / f"pulled{host}") == digest
        assert metrics[host][served] == BLOB_SIZE, (
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


@pytest.mark.skipif(shutil.which("iptables") is None, reason="needs iptables")
def test_a_node_whose_peer_port_a_firewall_closes_says_so(
    cluster: Callable[[float], Cluster], tmp_path: Path
) -> None:
    """h2 drops connections to its peer port. It still pulls (it dials h1 and the origin),
    but nobody can dial it: after 3 s of download with h1 holding pieces it warns, once.
    h1, which h2 dialled, does not, with 5 s (h2 dials it about a second after its start).
    Links of 20 Mbit/s make each pull last about 7 s, past both thresholds (agents' own
    ``unreachable_after``; the default 10 s made this test wait out 13 s pulls)."""
    firewalled, reachable = AGENT_HOSTS[1], AGENT_HOSTS[0]
    thresholds = {firewalled: "3", reachable: "5"}
    net = cluster(20.0)
    net.run(firewalled, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "6882", "-j", "DROP")
    tracker = f"http://{net.ip(ORIGIN_HOST)}:7000"
    announced = 'krill_tracker_announces_total{event="started",result="ok"}'
    agent_env = {host: {"KRILL_AGENT_UNREACHABLE_AFTER": t} for host, t in thresholds.items()}
    with readme_services(net, tmp_path, agent_env):
        digest = push_random_blob(net, tmp_path)
        first = start_pull(net, reachable, digest, tmp_path)
        # h1 and the origin's seed in the tracker first: h2 then dials h1 itself.
        until_sync(
            lambda: _metrics(net, ORIGIN_HOST, tracker).get(announced, 0) >= 2,
            "h1 and the origin announced", within=60, interval=0.1,
        )
        second = start_pull(net, firewalled, digest, tmp_path)
        finish_pull(first)
        finish_pull(second)
        metrics = {host: _metrics(net, host) for host in AGENT_HOSTS}

    logs = {host: (tmp_path / f"agent{host}.log").read_text() for host in AGENT_HOSTS}
    assert _sha256(tmp_path / f"pulled{firewalled}") == digest
    assert logs[firewalled].count("swarm.peer_port_unreachable") == 1, logs[firewalled][-3000:]
    assert metrics[firewalled]["krill_agent_swarm_unreachable_downloads"] == 1
    assert "swarm.peer_port_unreachable" not in logs[reachable]
    assert metrics[reachable]["krill_agent_swarm_unreachable_downloads"] == 0
