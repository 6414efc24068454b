"""A cluster of network namespaces on this machine: one bridge, N hosts, shaped links.

Shared by the tests that run real services on separate "hosts"
(``tests/test_agent_netns.py``) and the herd benchmark
(``scripts/bench_herd.py``), so both build the same network the same way:

    <prefix>sw         a "switch": one bridge, no addresses
    <prefix>h0..N      hosts, <subnet>.1..N+1, one veth link each to the bridge

Each link can be shaped with ``tc tbf`` in both directions (host egress on
its side, host ingress on the switch side), so every host is a machine with
a network card of that rate. Every address lives only inside namespaces
created here, and ``Cluster.remove`` deletes every namespace with the
cluster's prefix (what a crashed earlier run left, too). Needs root.

Faults and processes for the tests that break the network under a pull
(``tests/test_faults_partition*.py``):

* ``Cluster.unplugged(i)``: host i's switch port down, as if its cable were
  pulled; ``Cluster.cut(group, others)``: every packet between the two sets
  of hosts dropped (iptables in each host of ``group``, both directions),
  while each set still reaches itself and anyone not named;
* ``Cluster.krill(i, args, log)``: a real ``krill`` process on host i;
  ``Cluster.fetch(i, url, out)``: curl on host i, in the background;
  ``Cluster.metrics(i, url)``: a service's Prometheus samples, read from host i;
* ``krill_services``: origin and tracker on one host, an agent on each of
  others (``KrillServices.push`` a blob, ``.pull`` it through an agent,
  ``.agent_logged`` an event), ``received``: the blob bytes an agent has
  taken in, by any path, and ``hold_until_swarms_gave_up``: a partition's
  length, until the swarms cut off have given up on their requests to the origin.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from krill.endpoints import DELTAS
from krill.processes import logged_process
from tests.metrics_text import parse_metrics
from tests.polling import until_sync

__all__ = [
    "Cluster",
    "KrillServices",
    "finish",
    "hold_until_swarms_gave_up",
    "in_ns",
    "krill_services",
    "received",
    "sh",
    "sha256_file",
]

# tbf's bucket must hold a whole GSO super-packet (64 KiB plus headers): a smaller
# one makes tbf cut every super-packet into MTU-sized ones in software, work a
# real NIC does in hardware, which cost this 2-core machine ~40 % more system CPU
# in the herd benchmark. At >= 100 Mbit/s it is also at least one 4 ms timer tick.
MIN_BURST = 128 * 1024
# Queue per shaped link direction, as tbf's latency: what a switch port buffers.
QUEUE_LATENCY = "50ms"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; with ``check`` a failure raises RuntimeError with its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc


def in_ns(ns: str, *cmd: str) -> list[str]:
    """``cmd`` run inside network namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *cmd]


@dataclass(frozen=True)
class Cluster:
    """Names and addresses of one cluster; ``build`` makes it, ``remove`` deletes it."""

    prefix: str  # namespace names start with it (keep it short: it is not in link names)
    subnet: str = "10.77.0"  # the /24 inside the cluster's namespaces

    @property
    def switch(self) -> str:
        return f"{self.prefix}sw"

    def ns(self, index: int) -> str:
        return f"{self.prefix}h{index}"

    def ip(self, index: int) -> str:
        return f"{self.subnet}.{index + 1}"

    def run(self, index: int, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(*in_ns(self.ns(index), *cmd), check=check)

    def remove(self) -> None:
        """Delete every namespace with this cluster's prefix (and so their links)."""
        for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
            name = line.split(" ")[0]
            if name.startswith(self.prefix):
                sh("ip", "netns", "del", name, check=False)

    def build(
        self, hosts: int, rate_mbit: float | None = None, mtu: int = 1500, tcp_cc: str | None = None
    ) -> None:
        """Hosts 0..hosts-1 on one bridge; links shaped to ``rate_mbit`` if given."""
        self.remove()
        sh("ip", "netns", "add", self.switch)
        sh(*in_ns(self.switch, "ip", "link", "add", "br0", "type", "bridge"))
        sh(*in_ns(self.switch, "ip", "link", "set", "br0", "up"))
        for index in range(hosts):
            self._add_host(index, mtu, tcp_cc)
            if rate_mbit is not None:
                # Both directions: the host's sends (its side) and what it receives.
                shape(self.ns(index), "eth0", rate_mbit)
                shape(self.switch, f"p{index}", rate_mbit)

    def _add_host(self, index: int, mtu: int, tcp_cc: str | None) -> None:
        ns = self.ns(index)
        sh("ip", "netns", "add", ns)
        sh(*in_ns(ns, "ip", "link", "set", "lo", "up"))
        if tcp_cc is not None:
            sh(*in_ns(ns, "sysctl", "-q", "-w", f"net.ipv4.tcp_congestion_control={tcp_cc}"))
        # Create the pair inside the host namespace, then move the switch end over,
        # so no interface ever appears in the namespace the caller runs in.
        sh(*in_ns(ns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", f"p{index}"))
        sh(*in_ns(ns, "ip", "link", "set", f"p{index}", "netns", self.switch))
        sh(*in_ns(ns, "ip", "addr", "add", f"{self.ip(index)}/24", "dev", "eth0"))
        sh(*in_ns(ns, "ip", "link", "set", "eth0", "mtu", str(mtu), "up"))
        sh(*in_ns(self.switch, "ip", "link", "set", f"p{index}", "master", "br0"))
        sh(*in_ns(self.switch, "ip", "link", "set", f"p{index}", "mtu", str(mtu), "up"))

    @contextlib.contextmanager
    def unplugged(self, index: int) -> Iterator[None]:
        """Host ``index``'s switch port down for the block: unplugged, its own link still up."""
        port = f"p{index}"
        sh(*in_ns(self.switch, "ip", "link", "set", port, "down"))
        try:
            yield
        finally:
            sh(*in_ns(self.switch, "ip", "link", "set", port, "up"))

    @contextlib.contextmanager
    def cut(self, group: Iterable[int], others: Iterable[int]) -> Iterator[None]:
        """No packet between ``group`` and ``others`` for the block, either way.

        Dropped, not refused: a partition sends no RST or ICMP, so connections
        hang until their timeouts, as they do when a switch between two racks
        fails. Hosts in neither set, and hosts within one set, still talk.
        """
        group, addresses = list(group), [self.ip(other) for other in others]
        try:
            for host in group:
                for address in addresses:
                    self.run(host, "iptables", "-A", "INPUT", "-s", address, "-j", "DROP")
                    self.run(host, "iptables", "-A", "OUTPUT", "-d", address, "-j", "DROP")
            yield
        finally:
            for host in group:  # these namespaces hold no other rules
                self.run(host, "iptables", "-F", "INPUT", check=False)
                self.run(host, "iptables", "-F", "OUTPUT", check=False)

    def krill(
        self, index: int, args: list[str], log: Path
    ) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
        """``krill ARGS`` on host ``index`` until the block ends, its output in ``log``."""
        command = in_ns(self.ns(index), sys.executable, "-m", "krill.cli", *args)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return logged_process(command, log, grace=10, env=env)

    def fetch(self, index: int, url: str, out: Path) -> subprocess.Popen[str]:
        """GET ``url`` from host ``index`` into ``out`` in the background (curl; ``finish`` it)."""
        return subprocess.Popen(
            in_ns(self.ns(index), "curl", "-sS", "-f", "-o", str(out), url),
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def metrics(self, index: int, url: str) -> dict[str, float]:
        """The samples at ``url`` (a /metrics endpoint), read from host ``index``."""
        return parse_metrics(self.run(index, "curl", "-sS", "-f", url).stdout)

    def tx_bytes(self, index: int) -> int:
        """Bytes host ``index`` has sent on its link."""
        return int(self.run(index, "cat", "/sys/class/net/eth0/statistics/tx_bytes").stdout)

    def wait_http(self, index: int, url: str, timeout: float = 30) -> None:
        """Poll ``url`` from host ``index`` until anything answers (a service is up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = self.run(
                index, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url, check=False
            )
            if probe.stdout.strip() not in ("", "000"):
                return
            time.sleep(0.2)  # a poll interval: nothing signals a process's listen
        raise TimeoutError(f"{url} did not answer from {self.ns(index)} in {timeout:.0f} s")

    def wait_for_delta(
        self, index: int, origin: str, target: str, bases: str, within: float = 300
    ) -> dict:
        """Ask the origin (from host ``index``; the first call queues the pairs) until it has
        a delta to ``target`` from one of ``bases`` (comma-separated); its answer."""
        url = f"{DELTAS.url(origin, target)}?have={bases}"
        answers: list[dict] = []

        def ready() -> bool:
            answers.append(json.loads(self.run(index, "curl", "-sS", "-f", url).stdout))
            return answers[-1]["status"] == "ok"

        until_sync(ready, f"the origin's delta for {target}", within=within, interval=0.1)
        return answers[-1]

    def push_blob(self, index: int, base: str, repository: str, path: Path, digest: str) -> None:
        """Monolithic upload (POST, then PUT ?digest=) from host ``index``."""
        headers = self.run(
            index, "curl", "-sS", "-D", "-", "-o", "/dev/null", "-X", "POST",
            f"{base}/v2/{repository}/blobs/uploads/",
        ).stdout
        location = next(
            line.split(":", 1)[1].strip()
            for line in headers.splitlines()
            if line.lower().startswith("location:")
        )
        url = location if location.startswith("http") else base + location
        url += ("&" if "?" in url else "?") + f"digest={digest}"
        self._put(index, url, path, "application/octet-stream")

    def push_manifest(
        self, index: int, base: str, repository: str, tag: str, path: Path, media_type: str
    ) -> None:
        self._put(index, f"{base}/v2/{repository}/manifests/{tag}", path, media_type)

    def _put(self, index: int, url: str, path: Path, media_type: str) -> None:
        status = self.run(
            index, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
            "-H", f"Content-Type: {media_type}", "--data-binary", f"@{path}", url,
        ).stdout.strip()
        if status != "201":
            raise RuntimeError(f"PUT {url} answered {status}")


# Agents that outlast a partition: the swarm's requests time out and are retried
# well within these, and a stalled client stream is not cut while the network heals.
AGENT_CONFIG = "stall_timeout = 120.0\nswarm_deadline = 30.0\norigin_timeout = 30.0\n"
ORIGIN_PORT, TRACKER_PORT, AGENT_PORT, REGISTRY_PORT = 5000, 7000, 7400, 7401


@dataclass(frozen=True)
class KrillServices:
    """Origin and tracker on host ``server``; agents (API :7400, registry :7401) on the rest,
    their logs in ``work``."""

    net: Cluster
    server: int
    work: Path
    repository: str = "netns/app"

    @property
    def origin(self) -> str:
        return f"http://{self.net.ip(self.server)}:{ORIGIN_PORT}"

    def push(self, path: Path, digest: str) -> None:
        self.net.push_blob(self.server, self.origin, self.repository, path, digest)

    def pull(self, host: int, digest: str, out: Path) -> subprocess.Popen[str]:
        """GET the blob through host ``host``'s agent into ``out``, in the background."""
        url = f"http://127.0.0.1:{REGISTRY_PORT}/v2/{self.repository}/blobs/{digest}"
        return self.net.fetch(host, url, out)

    def agent_logged(self, host: int, text: str) -> bool:
        """Whether the agent on ``host`` has logged a line containing ``text`` (an event)."""
        return text in (self.work / f"agent{host}.log").read_text()


@contextlib.contextmanager
def krill_services(
    net: Cluster, server: int, agents: Iterable[int], work: Path, agent_config: str = AGENT_CONFIG
) -> Iterator[KrillServices]:
    """Start origin (seeding through the tracker) and tracker on ``server``, an agent on each
    of ``agents``; all stopped when the block ends, their logs in ``work``."""
    services = KrillServices(net, server, work)
    tracker = f"http://{net.ip(server)}:{TRACKER_PORT}"
    (work / "agent.toml").write_text(agent_config)
    with contextlib.ExitStack() as stack:
        stack.enter_context(net.krill(server, [
            "tracker", "--listen", f"0.0.0.0:{TRACKER_PORT}", "--origin", services.origin,
        ], work / "tracker.log"))  # fmt: skip
        stack.enter_context(net.krill(server, [
            "origin", "--listen", f"0.0.0.0:{ORIGIN_PORT}", "--data", str(work / "origin"),
            "--tracker", tracker,
        ], work / "origin.log"))  # fmt: skip
        agents = list(agents)
        # The agents start alongside: nothing at their start asks origin or tracker.
        for host in agents:
            stack.enter_context(net.krill(host, [
                "agent", "--listen", f"127.0.0.1:{AGENT_PORT}",
                "--registry-listen", f"127.0.0.1:{REGISTRY_PORT}",
                "--data", str(work / f"agent{host}"), "--origin", services.origin,
                "--tracker", tracker, "--config", str(work / "agent.toml"),
            ], work / f"agent{host}.log"))  # fmt: skip
        net.wait_http(server, f"{tracker}/health")
        net.wait_http(server, f"{services.origin}/v2/")
        for host in agents:
            net.wait_http(host, f"http://127.0.0.1:{AGENT_PORT}/health")
        yield services


def received(net: Cluster, host: int) -> float:
    """Blob bytes the agent on ``host`` has received, from peers, the origin's piece feed or
    its HTTP fallback."""
    metrics = net.metrics(host, f"http://127.0.0.1:{AGENT_PORT}/metrics")
    return (
        metrics.get('krill_agent_swarm_payload_bytes{direction="downloaded"}', 0.0)
        + metrics.get("krill_agent_swarm_origin_feed_bytes", 0.0)
        + metrics.get("krill_agent_origin_http_bytes_total", 0.0)
    )


# How long the swarm waits on a silent request before it gives up on it: the read
# timeout of its piece feed from the origin (krill.piecefeed); libtorrent's request and
# piece timeouts towards peers (krill.swarm.settings) are no longer.
SWARM_REQUEST_TIMEOUT = 10.0
# Beyond it, for a loaded machine's timers, before a partition is healed regardless.
PARTITION_MARGIN = 2.0


def hold_until_swarms_gave_up(
    services: KrillServices, hosts: Iterable[int], digest: str, cut_at: float
) -> None:
    """A partition's length, from ``cut_at`` (``time.monotonic``): the swarm's request
    timeouts, and until the swarm of the agent on each of ``hosts`` has given up on its
    request to the origin's piece feed for ``digest`` (``krill.swarm.feed`` logs
    ``swarm.origin_claims_failed``); ``PARTITION_MARGIN`` s more at most, should an agent
    never log it (no request in flight at the cut). So the swarm's own retries must
    outlast the partition, not only TCP's."""
    event = f"swarm.origin_claims_failed digest={digest}"
    hosts = list(hosts)
    timed_out_at = cut_at + SWARM_REQUEST_TIMEOUT

    def over() -> bool:
        now = time.monotonic()
        if now >= timed_out_at + PARTITION_MARGIN:
            return True
        return now >= timed_out_at and all(services.agent_logged(h, event) for h in hosts)

    until_sync(over, "the end of the partition", interval=0.1)


def finish(fetch: subprocess.Popen[str], timeout: float = 300) -> None:
    """Wait for a ``Cluster.fetch``; fail with curl's message if it failed."""
    _, stderr = fetch.communicate(timeout=timeout)
    assert fetch.returncode == 0, stderr


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def shape(ns: str, dev: str, rate_mbit: float) -> None:
    """Token bucket on a device's egress: at most ``rate_mbit``, a 50 ms queue."""
    burst = max(MIN_BURST, int(rate_mbit * 1e6 / 8 / 250))
    sh(*in_ns(ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
              "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", QUEUE_LATENCY))
