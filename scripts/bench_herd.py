"""The herd benchmark: N nodes pull one blob at once, via the swarm and via a plain registry.

Builds a cluster out of network namespaces on this machine (run as root):

    krillbench-sw      a "switch": one bridge, no addresses
    krillbench-h0      origin host: krill origin + krill tracker + docker-registry, 10.77.0.1
    krillbench-h1..N   node hosts, 10.77.0.2..N+1, one swarm driver each

Every host has one veth link to the bridge, shaped with ``tc tbf`` to RATE in
both directions (host egress on its side, host ingress on the switch side),
so each host is a machine with a RATE network card (MTU 9000 by default, as
on most data-centre fabrics; ``--mtu 1500`` for the other) that runs Linux's
default TCP congestion control, cubic (``--tcp-cc``). A new namespace would
start with this machine's default instead, which may be another (here: bbr).
All addresses live only inside namespaces this script creates; every
namespace is deleted on exit, including Ctrl-C and SIGTERM.

Then, in one run:

1. the blob is pushed to the origin and to the docker-registry (on h0, local);
2. swarm: every node runs a SwarmEngine (``--peer`` mode of this script), set
   up as the agent sets it up (HTTP piece claims from the origin, unless
   ``--no-claims``): on "go" it fetches metainfo from the tracker and downloads
   the blob; the pull time is from "go" to the blob verified in the node's store;
3. plain registry: every node GETs the blob from docker-registry with curl.

Prints p50/p99 pull time as a multiple of the physical limit (size / rate),
origin egress (bytes sent by h0's link during the swarm phase) as a multiple
of the blob size, and the speed-up of the swarm over the plain registry; on
stderr, per second: the origin's egress, the nodes' mean link use, the mean
and slowest node's progress, and the machine's CPU use (a 2-core machine
emulating 16 hosts' networks runs out of CPU before the links are full).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from krill.swarm import Download

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "krillbench-"
SWITCH = PREFIX + "sw"
SUBNET = "10.77.0"  # only ever assigned inside the namespaces created here
ORIGIN_PORT, TRACKER_PORT, REGISTRY_PORT, PEER_PORT = 5000, 7000, 5001, 6881


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def host_ns(index: int) -> str:
    return f"{PREFIX}h{index}"


def host_ip(index: int) -> str:
    return f"{SUBNET}.{index + 1}"


# ---- the cluster ----


def remove_namespaces() -> None:
    """Delete every namespace this script may have created (its prefix only)."""
    listed = sh("ip", "netns", "list", check=False).stdout.split("\n")
    for line in listed:
        name = line.split(" ")[0]
        if name.startswith(PREFIX):
            sh("ip", "netns", "del", name, check=False)


# tbf's bucket must hold a whole GSO super-packet (64 KiB plus headers): a smaller
# one makes tbf cut every super-packet into MTU-sized ones in software, work a
# real NIC does in hardware, which cost this 2-core machine ~40 % more system CPU
# in the herd benchmark. At >= 100 Mbit/s it is also at least one 4 ms timer tick.
MIN_BURST = 128 * 1024
# Queue per shaped link direction, as tbf's latency: what a switch port buffers.
QUEUE_LATENCY = "50ms"


def shape(ns: str, dev: str, rate_mbit: float) -> None:
    """Token bucket on a device's egress: at most ``rate_mbit``, a 50 ms queue."""
    burst = max(MIN_BURST, int(rate_mbit * 1e6 / 8 / 250))
    sh(
        *in_ns(
            ns,
            "tc",
            "qdisc",
            "replace",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            f"{rate_mbit}mbit",
            "burst",
            str(burst),
            "latency",
            QUEUE_LATENCY,
        )
    )


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


def build_cluster(nodes: int, rate_mbit: float, mtu: int, tcp_cc: str) -> None:
    remove_namespaces()
    sh("ip", "netns", "add", SWITCH)
    sh(*in_ns(SWITCH, "ip", "link", "add", "br0", "type", "bridge"))
    sh(*in_ns(SWITCH, "ip", "link", "set", "br0", "up"))
    for index in range(nodes + 1):
        ns = host_ns(index)
        sh("ip", "netns", "add", ns)
        sh(*in_ns(ns, "ip", "link", "set", "lo", "up"))
        sh(*in_ns(ns, "sysctl", "-q", "-w", f"net.ipv4.tcp_congestion_control={tcp_cc}"))
        # Create the pair inside the host namespace, then move the switch end over,
        # so no interface ever appears in the namespace this script runs in.
        sh(*in_ns(ns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", f"p{index}"))
        sh(*in_ns(ns, "ip", "link", "set", f"p{index}", "netns", SWITCH))
        sh(*in_ns(ns, "ip", "addr", "add", f"{host_ip(index)}/24", "dev", "eth0"))
        sh(*in_ns(ns, "ip", "link", "set", "eth0", "mtu", str(mtu), "up"))
        sh(*in_ns(SWITCH, "ip", "link", "set", f"p{index}", "master", "br0"))
        sh(*in_ns(SWITCH, "ip", "link", "set", f"p{index}", "mtu", str(mtu), "up"))
        # Both directions: the host's sends (its side) and what it receives (switch side).
        for side_ns, dev in ((ns, "eth0"), (SWITCH, f"p{index}")):
            shape(side_ns, dev, rate_mbit)


def tx_bytes(ns: str, dev: str = "eth0") -> int:
    out = sh(*in_ns(ns, "cat", f"/sys/class/net/{dev}/statistics/tx_bytes")).stdout
    return int(out.strip())


# ---- processes ----


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


def wait_http(ns: str, url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = sh(
            *in_ns(ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url), check=False
        )
        if probe.stdout.strip() not in ("", "000"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {ns}")


def krill(*args: str) -> list[str]:
    return [sys.executable, "-m", "krill.cli", *args]


def start_servers(procs: Processes, work: Path, claims: bool) -> None:
    ns, ip = host_ns(0), host_ip(0)
    origin = f"http://{ip}:{ORIGIN_PORT}"
    tracker = f"http://{ip}:{TRACKER_PORT}"
    procs.start(
        in_ns(ns, *krill("tracker", "--listen", f"{ip}:{TRACKER_PORT}", "--origin", origin)),
        work / "tracker.log",
    )
    procs.start(
        in_ns(
            ns,
            *krill(
                "origin",
                "--listen",
                f"{ip}:{ORIGIN_PORT}",
                "--data",
                str(work / "origin"),
                "--tracker",
                tracker,
                "--peer-port",
                str(PEER_PORT),
            ),
        ),
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
    procs.start(in_ns(ns, "docker-registry", "serve", str(config)), work / "registry.log")
    for url in (f"{tracker}/health", f"{origin}/v2/", f"http://{ip}:{REGISTRY_PORT}/v2/"):
        wait_http(ns, url)


def push(base: str, blob: Path) -> str:
    """Monolithic upload (POST + PUT ?digest=) from inside h0; returns the digest."""
    from krill.digests import sha256_file

    digest = str(sha256_file(str(blob)))
    ns = host_ns(0)
    headers = sh(
        *in_ns(
            ns,
            "curl",
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            f"{base}/v2/bench/herd/blobs/uploads/",
        )
    ).stdout
    location = next(
        line.split(":", 1)[1].strip()
        for line in headers.splitlines()
        if line.lower().startswith("location:")
    )
    url = location if location.startswith("http") else base + location
    url += ("&" if "?" in url else "?") + f"digest={digest}"
    status = sh(
        *in_ns(
            ns,
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            f"@{blob}",
            url,
        )
    ).stdout
    if status.strip() != "201":
        raise RuntimeError(f"pushing to {base} answered {status}")
    return digest


# ---- the two pulls ----


def swarm_pull(
    procs: Processes, work: Path, nodes: int, digest: str, claims: bool
) -> list[float]:
    tracker = f"http://{host_ip(0)}:{TRACKER_PORT}"
    drivers = []
    for index in range(1, nodes + 1):
        cmd = in_ns(
            host_ns(index),
            sys.executable,
            str(Path(__file__).resolve()),
            "--peer",
            "--tracker",
            tracker,
            "--digest",
            digest,
            *(("--origin", f"http://{host_ip(0)}:{ORIGIN_PORT}") if claims else ()),
            "--listen-host",
            host_ip(index),
            "--data",
            str(work / f"node{index}"),
        )
        drivers.append(
            procs.start(
                cmd, work / f"node{index}.log", stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
        )
    for driver in drivers:  # each prints "ready" once its engine listens
        if read_line(driver) != {"ready": True}:
            raise RuntimeError("a swarm driver failed to start; see its log")
    log(f"{nodes} nodes ready; go")
    for driver in drivers:
        assert driver.stdin is not None
        driver.stdin.write("go\n")
        driver.stdin.flush()
    sampler = LinkSampler(nodes + 1)
    sampler.start()
    cpu_before = cpu_times()
    results = [read_line(driver) for driver in drivers]
    busy = cpu_busy(cpu_before, cpu_times())
    sampler.stop()
    def mbits(values: list[float]) -> str:
        return " ".join(f"{v:.0f}" for v in values)

    log("origin egress Mbit/s per second: " + mbits(sampler.rates(0)))
    hosts = range(1, nodes + 1)
    log("nodes' mean download Mbit/s per second: " + mbits(sampler.mean_rates(hosts, True)))
    log("nodes' mean upload Mbit/s per second: " + mbits(sampler.mean_rates(hosts, False)))
    log_progress(results)
    log(
        f"machine CPU busy during the swarm pull: {busy:.0%} of {os.cpu_count()} CPUs "
        "(near 100 %: the figures measure this machine, not the protocol)"
    )
    check_copies(drivers, digest)
    user = sum(float(r["cpu_user"]) for r in results)
    system = sum(float(r["cpu_sys"]) for r in results)
    log(f"node processes used {user:.1f} s user + {system:.1f} s system CPU in the pull")
    fed = sum(int(r.get("origin_feed_bytes", 0)) for r in results)  # type: ignore[call-overload]
    traded = sum(int(r.get("peer_bytes", 0)) for r in results)  # type: ignore[call-overload]
    log(f"nodes received {fed / 2**20:.1f} MiB from the origin over HTTP (piece claims) and "
        f"{traded / 2**20:.1f} MiB over the swarm (peers and the origin's seed)")
    return [float(r["seconds"]) for r in results]


def check_copies(drivers: list[subprocess.Popen[str]], digest: str) -> None:
    """Every node's stored copy hashes to the digest (the bench's own check).

    Asked for only once every node has finished: a node hashing its copy while
    others still pull would take their CPU and slow the pulls being measured.
    """
    for driver in drivers:
        assert driver.stdin is not None
        driver.stdin.write("verify\n")
        driver.stdin.flush()
    for driver in drivers:
        answer = read_line(driver)
        if answer.get("sha256") != digest.removeprefix("sha256:"):
            raise RuntimeError(f"a node ended with the wrong blob: {answer}")
    for driver in drivers:
        assert driver.stdin is not None
        driver.stdin.close()


def log_progress(results: list[dict[str, object]]) -> None:
    """Mean and slowest node's share of the blob, every PROGRESS_STEP seconds."""
    series = [list(r.get("progress", [])) for r in results]  # type: ignore[call-overload]
    steps = max((len(s) for s in series), default=0)
    mean, slowest = [], []
    for step in range(steps):
        values = [s[step] if step < len(s) else 1.0 for s in series]
        mean.append(sum(values) / len(values))
        slowest.append(min(values))
    for name, series_ in (("mean", mean), ("slowest", slowest)):
        shares = " ".join(f"{v:.0%}" for v in series_)
        log(f"nodes' progress every {PROGRESS_STEP}s, {name}: {shares}")


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
        values = [int(v) for v in sh(*in_ns(SWITCH, "cat", *paths)).stdout.split()]
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


def read_line(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"driver exited with {proc.wait()} before answering")
    return json.loads(line)


def registry_pull(work: Path, nodes: int, digest: str) -> list[float]:
    """Every node GETs the blob from docker-registry at once; seconds until each has it.

    A transfer the registry cuts off (seen once in ~10 runs: a reset after a
    minute of sharing one link 16 ways) is resumed with a Range request, as a
    registry client would; the time counts from the first request.
    """
    url = f"http://{host_ip(0)}:{REGISTRY_PORT}/v2/bench/herd/blobs/{digest}"
    curl = ["curl", "-sS", "-f", "--retry", "3", "--retry-all-errors", "--retry-delay", "0",
            "-C", "-", url, "-o"]  # -C -: a retry resumes where the file ends
    start = time.monotonic()
    running = {
        i: subprocess.Popen(
            in_ns(host_ns(i), *curl, str(work / f"registry-copy-{i}")),
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(1, nodes + 1)
    }
    times: list[float] = []
    while running:
        for i, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[i]
            if proc.returncode != 0:
                stderr = proc.stderr.read().strip() if proc.stderr else ""
                raise RuntimeError(f"registry GET failed with {proc.returncode}: {stderr}")
            times.append(time.monotonic() - start)
            (work / f"registry-copy-{i}").unlink()
        time.sleep(0.01)
    return times


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# ---- the per-node swarm driver (runs inside a node namespace) ----


async def peer_main(args: argparse.Namespace) -> int:
    import aiohttp

    from krill.blobstore import BlobStore
    from krill.digests import Digest, sha256_file
    from krill.logs import setup_logging
    from krill.originclient import fetch_metainfo
    from krill.swarm import SwarmEngine, SwarmSettings

    setup_logging("warning")
    digest = Digest.parse(args.digest)
    settings = SwarmSettings(
        tracker_url=args.tracker + "/announce",
        listen_host=args.listen_host,
        peer_port=PEER_PORT,
        origin_urls=(args.origin,) if args.origin else (),
        durable_downloads=False,  # as the agent: its cache re-verifies after a restart
    )
    # Everything a running agent has already done at start-up (imports, its HTTP
    # session, the TLS context aiohttp builds for it) happens before "ready": the
    # pull time is the pull's, not Python start-up's (done at "go", it cost each
    # node ~0.5 s of CPU, measured with py-spy).
    async with (
        aiohttp.ClientSession() as http,
        # As the agent: its own session also carries the engine's piece feed.
        SwarmEngine(settings, BlobStore(args.data), http=http) as engine,
    ):
        async with http.get(args.tracker + "/health") as health:
            health.raise_for_status()
        emit({"ready": True})
        await asyncio.to_thread(sys.stdin.readline)  # "go"
        start = time.monotonic()
        before = resource.getrusage(resource.RUSAGE_SELF)  # CPU of the pull only, not start-up
        metainfo = await fetch_metainfo(http, args.tracker, digest)
        download = await engine.download(digest, metainfo)
        progress = asyncio.create_task(sample_progress(download))
        path = await download.wait_done()
        seconds = time.monotonic() - start
        progress.cancel()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        stats = await engine.fetch_stats()
        emit(
            {
                "seconds": seconds,
                "origin_feed_bytes": stats.origin_feed_bytes,
                "progress": PROGRESS,
                "peer_bytes": stats.downloaded,
                "cpu_user": usage.ru_utime - before.ru_utime,
                "cpu_sys": usage.ru_stime - before.ru_stime,
            }
        )
        await asyncio.to_thread(sys.stdin.readline)  # "verify": every node is done
        emit({"sha256": (await asyncio.to_thread(sha256_file, str(path))).hex})
        await asyncio.to_thread(sys.stdin.read)  # keep seeding until the bench ends
    return 0


PROGRESS: list[float] = []  # fraction of the blob verified, every PROGRESS_STEP seconds
PROGRESS_STEP = 0.5




async def sample_progress(download: Download) -> None:
    while True:
        PROGRESS.append(download.verified_pieces / download.num_pieces)
        await asyncio.sleep(PROGRESS_STEP)


def emit(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


# ---- main ----


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
        remove_namespaces()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def run_bench(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        sys.stderr.write("bench-herd: needs root (network namespaces and tc); run with sudo\n")
        return 2
    size = args.size_mib * 1024 * 1024
    limit = size * 8 / (args.rate_mbit * 1e6)
    work = Path(tempfile.mkdtemp(prefix="krill-bench-herd-"))
    procs = Processes()
    # Signal handlers first (cleanup_on_exit), so a SIGTERM while the allowed list
    # is changed still puts it back.
    with cleanup_on_exit(procs, work, args.keep), congestion_control_allowed(args.tcp_cc):
        log(
            f"cluster: {args.nodes} nodes + origin host, {args.rate_mbit} Mbit/s links "
            f"(MTU {args.mtu}, TCP {args.tcp_cc}), "
            f"{args.size_mib} MiB blob (limit {limit:.2f} s); work dir {work}"
        )
        build_cluster(args.nodes, args.rate_mbit, args.mtu, args.tcp_cc)
        start_servers(procs, work, not args.no_claims)
        blob = work / "blob"
        with open(blob, "wb") as f:
            f.write(os.urandom(size))
        digest = push(f"http://{host_ip(0)}:{ORIGIN_PORT}", blob)
        push(f"http://{host_ip(0)}:{REGISTRY_PORT}", blob)
        blob.unlink()

        log("swarm pull ...")
        sent_before = tx_bytes(host_ns(0))
        swarm = swarm_pull(procs, work, args.nodes, digest, not args.no_claims)
        time.sleep(1)  # let the last HAVEs and tracker answers drain before reading the counter
        egress = (tx_bytes(host_ns(0)) - sent_before) / size
        if args.skip_registry:
            log("plain registry pull skipped (--skip-registry): speed-up not measured")
            plain = [float("nan")] * args.nodes
        else:
            log("plain registry pull ...")
            plain = registry_pull(work, args.nodes, digest)
        report(args, limit, swarm, plain, egress)
    return 0


def report(
    args: argparse.Namespace,
    limit: float,
    swarm: list[float],
    plain: list[float],
    egress: float,
) -> None:
    s50, s99 = percentile(swarm, 50), percentile(swarm, 99)
    p50, p99 = percentile(plain, 50), percentile(plain, 99)
    lines = [
        f"nodes={args.nodes} rate={args.rate_mbit}Mbit/s mtu={args.mtu} tcp={args.tcp_cc} "
        f"size={args.size_mib}MiB "
        f"claims={'off' if args.no_claims else 'on'} "
        f"limit={limit:.2f}s cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}",
        f"swarm:    p50 {s50:7.2f}s = {s50 / limit:5.2f}x limit   "
        f"p99 {s99:7.2f}s = {s99 / limit:5.2f}x limit   (goals 1.15x / 1.5x)",
        f"origin egress during swarm pull: {egress:.2f}x blob   (goal <= 1.5x)",
        f"registry: p50 {p50:7.2f}s = {p50 / limit:5.2f}x limit   "
        f"p99 {p99:7.2f}s = {p99 / limit:5.2f}x limit",
        f"speed-up over plain registry: p50 {p50 / s50:.1f}x, p99 {p99 / s99:.1f}x (goal >= 10x)",
    ]
    print("\n".join(lines))
    print(
        json.dumps(
            {
                "swarm_s": sorted(swarm),
                "registry_s": sorted(plain),
                "origin_egress_x": egress,
                "limit_s": limit,
            }
        )
    )


def log(message: str) -> None:
    sys.stderr.write(f"[bench-herd] {message}\n")
    sys.stderr.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--rate-mbit", type=float, default=100.0)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument(
        "--mtu",
        type=int,
        default=9000,
        help="link MTU (default 9000: jumbo frames, as on most data-centre fabrics, e.g. "
        "AWS VPCs; 1500 costs this machine's emulated network more CPU)",
    )
    parser.add_argument(
        "--tcp-cc",
        default="cubic",
        help="the hosts' TCP congestion control (default cubic: Linux's default, "
        "so the hosts behave as stock Linux even where this machine defaults to "
        "another, e.g. bbr, which is measured too)",
    )
    parser.add_argument(
        "--no-claims",
        action="store_true",
        help="nodes take pieces from peers and the origin's seed (a plain seed then, not "
        "super-seeding) only, no HTTP piece claims: the swarm as it was before claims",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument(
        "--skip-registry",
        action="store_true",
        help="swarm only (for tuning runs); no speed-up figure",
    )
    # --peer mode: the per-node driver this script starts inside each node namespace.
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tracker", help=argparse.SUPPRESS)
    parser.add_argument("--digest", help=argparse.SUPPRESS)
    parser.add_argument("--origin", help=argparse.SUPPRESS)
    parser.add_argument("--listen-host", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        return asyncio.run(peer_main(args))
    try:
        return run_bench(args)
    except KeyboardInterrupt:
        log("interrupted; cluster removed")
        return 130
    except RuntimeError as exc:  # a command that failed, a missing TCP algorithm
        sys.stderr.write(f"bench-herd: {exc}; cluster removed\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
