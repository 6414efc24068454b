"""What the herd benchmark's modes share: the cluster's names, processes, link counters.

``scripts/bench_herd.py`` builds the cluster (``tests/netns.py``) and runs
one of two pulls on it: ``herd_agents`` (real ``krill agent`` processes,
pulled through their registry endpoints) or ``herd_engine`` (a bare
``SwarmEngine`` per node, for tuning the swarm). Both start processes
through ``Processes``, talk to their per-node drivers in JSON lines
(``emit``/``read_line``), and sample the links with ``LinkSampler``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # tests.netns: the cluster code the netns tests use too
    sys.path.insert(0, str(ROOT))

from tests.netns import Cluster, in_ns, sh  # noqa: E402

CLUSTER = Cluster(prefix="krillbench-", subnet="10.77.0")  # addresses only inside its namespaces
ORIGIN_PORT, TRACKER_PORT, REGISTRY_PORT, PEER_PORT = 5000, 7000, 5001, 6881
# The agent's ports, as README.md and the chart set them (control, registry, peer).
AGENT_CONTROL_PORT, AGENT_REGISTRY_PORT, AGENT_PEER_PORT = 7400, 7401, 6882
REPOSITORY, TAG = "bench/herd", "v1"


def agents_start_timeout(nodes: int) -> float:
    """Seconds to wait for N agents started at once to answer /health.

    Each spends a few CPU-seconds importing Python and libtorrent; on a shared
    2-core machine (load 15-30) 32 of them took over a minute.
    """
    return 60.0 + 5.0 * nodes


def host_ns(index: int) -> str:
    return CLUSTER.ns(index)


def host_ip(index: int) -> str:
    return CLUSTER.ip(index)


def origin_url() -> str:
    return f"http://{host_ip(0)}:{ORIGIN_PORT}"


def tracker_url() -> str:
    return f"http://{host_ip(0)}:{TRACKER_PORT}"


def registry_url() -> str:
    return f"http://{host_ip(0)}:{REGISTRY_PORT}"


class Processes:
    """Every process started here, so all of them (and only them) are stopped at exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(
        self, cmd: list[str], log: Path, env: dict[str, str] | None = None, **kwargs: object
    ) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log, "w") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=kwargs.pop("stdout", out),
                stderr=out,
                env=env,
                text=True,
                cwd=ROOT,
                **kwargs,
            )  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()



def krill(*args: str) -> list[str]:
    return [sys.executable, "-m", "krill.cli", *args]


def driver(*args: str) -> list[str]:
    """This benchmark's own per-node driver mode (``--peer``, ``--client``)."""
    return [sys.executable, str(ROOT / "scripts" / "bench_herd.py"), *args]


def cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies from /proc/stat, for the whole machine."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def cpu_busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    idle, total = after[0] - before[0], after[1] - before[1]
    return 1 - idle / total if total else 0.0


class LinkSampler(threading.Thread):
    """Every second, the bytes each host sent and received (read on the switch side).

    A switch port's ``rx_bytes`` is what its host sent (its uplink) and
    ``tx_bytes`` what the host received (its downlink).
    """

    def __init__(self, hosts: int) -> None:
        super().__init__(daemon=True)
        self.hosts = hosts
        self.samples: list[list[tuple[int, int]]] = []  # per sample: (sent, received) per host
        self.times: list[float] = []  # when each sample was read
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            before = time.monotonic()
            self.samples.append(self.read())
            self.times.append((before + time.monotonic()) / 2)  # the read takes a process start
            self.done.wait(1.0)

    def read(self) -> list[tuple[int, int]]:
        paths = []
        for index in range(self.hosts):
            base = f"/sys/class/net/p{index}/statistics"
            paths += [f"{base}/rx_bytes", f"{base}/tx_bytes"]
        values = [int(v) for v in sh(*in_ns(CLUSTER.switch, "cat", *paths)).stdout.split()]
        return list(zip(values[0::2], values[1::2], strict=True))

    def stop(self) -> None:
        self.done.set()
        self.join()

    def rates(self, host: int, received: bool = False) -> list[float]:
        """Mbit/s sent (or received) by one host, per interval between samples.

        Divided by the interval measured, not the nominal second: reading the
        counters takes a process start, and under load each interval is a few
        percent longer than a second (rates above the link's showed it).
        """
        column = 1 if received else 0
        intervals = zip(self.samples, self.samples[1:], self.times, self.times[1:], strict=False)
        return [
            (b[host][column] - a[host][column]) * 8 / 1e6 / (t1 - t0)
            for a, b, t0, t1 in intervals
        ]

    def mean_rates(self, hosts: range, received: bool) -> list[float]:
        series = [self.rates(host, received) for host in hosts]
        return [sum(values) / len(values) for values in zip(*series, strict=True)]


def read_line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"driver exited with {proc.wait()} before answering")
    return json.loads(line)



def emit(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def log(message: str) -> None:
    sys.stderr.write(f"[bench-herd] {message}\n")
    sys.stderr.flush()
