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
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Cluster", "in_ns", "sh"]

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


def shape(ns: str, dev: str, rate_mbit: float) -> None:
    """Token bucket on a device's egress: at most ``rate_mbit``, a 50 ms queue."""
    burst = max(MIN_BURST, int(rate_mbit * 1e6 / 8 / 250))
    sh(*in_ns(ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
              "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", QUEUE_LATENCY))
