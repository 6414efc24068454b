"""What the herd benchmark's modes share: the cluster's names, processes, link counters.

``scripts/bench_herd.py`` builds the cluster (``tests/netns.py``) and runs
one of two pulls on it: ``herd_agents`` (real ``krill agent`` processes,
pulled through their registry endpoints) or ``herd_engine`` (a bare
``SwarmEngine`` per node, for tuning the swarm). Both start processes
through ``Processes``, talk to their per-node drivers in JSON lines
(``emit``/``read_line``), and sample the links with ``LinkSampler``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # tests.netns: the cluster code the netns tests use too
    sys.path.insert(0, str(ROOT))

from tests.netns import Cluster, in_ns, sh  # noqa: E402

# Addresses only inside its namespaces. KRILL_HERD_PREFIX names another set of namespaces,
# so two herd runs on one machine (two people's) do not remove each other's cluster.
CLUSTER = Cluster(prefix=os.environ.get("KRILL_HERD_PREFIX", "krillbench-"), subnet="10.77.0")
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


# Congestion control is a per-namespace setting, but a namespace may only pick one
# of the machine's "allowed" ones (or whatever the machine's default is).
ALLOWED_CC = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
AVAILABLE_CC = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")


@contextlib.contextmanager
def congestion_control_allowed(name: str) -> Iterator[None]:
    """Let the hosts' namespaces use TCP congestion control ``name`` for the run.

    Adds it to the machine's allowed list if it is missing, and puts the list back
    afterwards (also on Ctrl-C): the machine's own default is never changed.
    """
    if name not in AVAILABLE_CC.read_text().split():
        if shutil.which("modprobe"):
            sh("modprobe", f"tcp_{name}", check=False)
        if name not in AVAILABLE_CC.read_text().split():
            raise RuntimeError(
                f"TCP congestion control {name!r} is not available on this machine "
                f"(available: {AVAILABLE_CC.read_text().strip()}); pick one with --tcp-cc"
            )
    before = ALLOWED_CC.read_text().strip()
    if name in before.split():
        yield
        return
    try:
        ALLOWED_CC.write_text(f"{before} {name}\n")
        yield
    finally:
        ALLOWED_CC.write_text(before + "\n")



def start_servers(procs: Processes, work: Path, claims: bool) -> int:
    """Tracker, origin and docker-registry on h0; returns docker-registry's pid."""
    ns, ip = host_ns(0), host_ip(0)
    procs.start(
        in_ns(ns, *krill("tracker", "--listen", f"{ip}:7000", "--origin", origin_url())),
        work / "tracker.log",
    )
    procs.start(
        in_ns(ns, *krill("origin", "--listen", f"{ip}:5000", "--data", str(work / "origin"),
                         "--tracker", tracker_url(), "--peer-port", str(PEER_PORT))),
        work / "origin.log",
        # Without claims a super-seeding origin would hardly send anything (3.5x the
        # limit measured): run it as a plain seed, as before claims existed.
        env=None if claims else {"KRILL_ORIGIN_SUPER_SEED": "false"},
    )
    registry_dir = work / "registry"
    registry_dir.mkdir()
    config = registry_dir / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {registry_dir / 'data'}}}}}\n"
        f"http: {{addr: '{ip}:{REGISTRY_PORT}'}}\n"
    )
    registry = procs.start(
        in_ns(ns, "docker-registry", "serve", str(config)), work / "registry.log"
    )
    for url in (f"{tracker_url()}/health", f"{origin_url()}/v2/", f"{registry_url()}/v2/"):
        CLUSTER.wait_http(0, url)
    return registry.pid



@contextlib.contextmanager
def cleanup_on_exit(procs: Processes, work: Path, keep: bool) -> Iterator[None]:
    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    try:
        yield
    finally:
        procs.stop_all()
        CLUSTER.remove()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)




def add_cluster_arguments(parser: argparse.ArgumentParser, nodes: int, mtu: int) -> None:
    """The options every herd benchmark's cluster takes (``herd_cluster`` reads them)."""
    parser.add_argument("--nodes", type=int, default=nodes)
    parser.add_argument("--rate-mbit", type=float, default=100.0)
    parser.add_argument(
        "--mtu",
        type=int,
        default=mtu,
        help=f"link MTU (default {mtu}; 9000 is jumbo frames, as on most data-centre "
        "fabrics, e.g. AWS VPCs; 1500 costs this machine's emulated network more CPU)",
    )
    parser.add_argument(
        "--tcp-cc",
        default="cubic",
        help="the hosts' TCP congestion control (default cubic: Linux's default, "
        "so the hosts behave as stock Linux even where this machine defaults to "
        "another, e.g. bbr, which is measured too)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument(
        "--skip-registry",
        action="store_true",
        help="Krill only (for tuning runs); no speed-up figure",
    )


@contextlib.contextmanager
def herd_cluster(
    args: argparse.Namespace, prefix: str, what: str = ""
) -> Iterator[tuple[Path, Processes]]:
    """The cluster of ``args`` (nodes, rate, MTU, TCP) built in namespaces, with a
    work directory and the ``Processes`` started in it; all removed on the way out
    (unless ``--keep``: the work directory stays)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    procs = Processes()
    # Signal handlers first (cleanup_on_exit), so a SIGTERM while the allowed list
    # is changed still puts it back.
    with cleanup_on_exit(procs, work, args.keep), congestion_control_allowed(args.tcp_cc):
        log(
            f"cluster: {args.nodes} nodes + origin host, {args.rate_mbit} Mbit/s links "
            f"(MTU {args.mtu}, TCP {args.tcp_cc}){what}; work dir {work}"
        )
        CLUSTER.build(args.nodes + 1, args.rate_mbit, args.mtu, args.tcp_cc)
        yield work, procs


def run_as_root(body: Callable[[], int]) -> int:
    """``body()``'s exit code; 2 when not root, 130 on Ctrl-C, 1 when a command failed
    (the cluster is removed by ``herd_cluster`` either way)."""
    if os.geteuid() != 0:
        log("needs root (network namespaces, tc); run with sudo")
        return 2
    try:
        return body()
    except KeyboardInterrupt:
        log("interrupted; cluster removed")
        return 130
    except RuntimeError as exc:  # a command that failed, a missing TCP algorithm
        log(f"{exc}; cluster removed")
        return 1


def wait_for_exits(
    running: dict[int, subprocess.Popen[str]],
    start: float,
    what: str,
    timeout: float | None = None,
    on_exit: Callable[[int], None] | None = None,
) -> list[float]:
    """Seconds from ``start`` until each node's process exited 0, in the order they did.

    A non-zero exit raises RuntimeError with the tail of that process's stderr
    (it must have been started with ``stderr=PIPE``); ``on_exit(node)`` runs as
    each one succeeds.
    """
    times: list[float] = []
    while running:
        for i, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[i]
            if proc.returncode != 0:
                stderr = proc.stderr.read().strip()[-2000:] if proc.stderr else ""
                raise RuntimeError(f"node {i}: {what} failed ({proc.returncode}): {stderr}")
            times.append(time.monotonic() - start)
            if on_exit is not None:
                on_exit(i)
        if timeout is not None and time.monotonic() - start > timeout:
            raise RuntimeError(f"{what} still running after {timeout:.0f} s")
        time.sleep(0.01)  # a poll interval for the exits, not a wait for an event
    return times


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
