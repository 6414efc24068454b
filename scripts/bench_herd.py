"""The herd benchmark: N nodes pull one image at once, via Krill and via a plain registry.

Builds a cluster out of network namespaces on this machine (run as root;
``tests/netns.py``):

    krillbench-sw      a "switch": one bridge, no addresses
    krillbench-h0      origin host: krill origin + krill tracker + docker-registry, 10.77.0.1
    krillbench-h1..N   node hosts, 10.77.0.2..N+1

Every host has one veth link to the bridge, shaped with ``tc tbf`` to RATE in
both directions (host egress on its side, host ingress on the switch side),
so each host is a machine with a RATE network card (MTU 9000 by default, as
on most data-centre fabrics; ``--mtu 1500`` for the other) that runs Linux's
default TCP congestion control, cubic (``--tcp-cc``). A new namespace would
start with this machine's default instead, which may be another (here: bbr).
All addresses live only inside namespaces this script creates; every
namespace is deleted on exit, including Ctrl-C and SIGTERM.

Then, in one run:

1. a one-layer image (random layer of SIZE) is pushed to the origin and to
   the docker-registry (on h0, local);
2. Krill, by default with real agents (``herd_agents``): every node runs
   ``krill agent`` as README.md and the chart run it, and a client on the
   node resolves the tag and streams the layer through the agent's registry
   endpoint, as containerd does; the pull time is from "go" to the last
   byte. ``--engine-only`` (``herd_engine``): a bare SwarmEngine per node
   instead, the pull time from "go" to the blob verified in its store (for
   tuning the swarm);
3. plain registry: every node GETs the manifest and the layer from
   docker-registry with curl, all at once.

``--shared-store`` (``herd_origins``) runs instead the herd through one
origin on a SeaweedFS bucket, then through two origins sharing it (agents
given both), in one run: issue 17's "origin egress stays ~1x".

Prints p50/p99 pull time as a multiple of the physical limit (size / rate),
origin egress (bytes sent by h0's link during the Krill phase) as a multiple
of the blob size, the speed-up over the plain registry, and with agents: the
agents' CPU-seconds per GiB pulled next to curl's and docker-registry's, the
time from "go" to the first byte and from the last piece to the last byte.
On stderr, per second: the origin's egress, the nodes' mean ingress and egress
(real-agent mode), and the machine's CPU use (80-95 % at N=16 and 100 Mbit/s;
the nodes' uplinks carry ~85 % of the link at any rate, which is what holds a
herd's p50 above the limit: docs/profile-agent.md, "the nodes' uplinks stop at
85 %").
This VM's host takes free memory back, and a herd of 16 emulated hosts would
pay the host's cost of backing it again on 2 cores: the run pauses the VM's
free page reporting, and just before each "go" (Krill's and the registry's)
writes and frees as much fresh page cache as the pull will write, timed
(``herd_memory``); ``--cold-memory`` does neither.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import cpu_seconds
from herd_common import (
    CLUSTER,
    REPOSITORY,
    TAG,
    add_cluster_arguments,
    herd_cluster,
    host_ns,
    in_ns,
    log,
    origin_url,
    registry_url,
    run_as_root,
    start_servers,
    wait_for_exits,
)
from herd_memory import add_cold_memory_argument, prepared_machine, pull_footprint_mib


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def image_files(work: Path, size: int) -> tuple[Path, Path, Path]:
    """A one-layer OCI image: (layer, config, manifest) files; the layer is random bytes."""
    layer = work / "layer"
    with open(layer, "wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(os.urandom(1 << 20))
        f.write(os.urandom(size % (1 << 20)))
    layer_digest = sha256_of(layer)
    config = work / "config.json"
    config.write_text(json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    manifest = work / "manifest.json"
    manifest.write_text(json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256_of(config), "size": config.stat().st_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": size}],
    }))
    return layer, config, manifest


def push_image(
    base: str, layer: Path, config: Path, manifest: Path, repository: str = REPOSITORY
) -> str:
    """Push the image's blobs, then its manifest, from h0; returns the layer's digest."""
    for blob in (config, layer):
        CLUSTER.push_blob(0, base, repository, blob, sha256_of(blob))
    CLUSTER.push_manifest(
        0, base, repository, TAG, manifest, "application/vnd.oci.image.manifest.v1+json"
    )
    return sha256_of(layer)


# ---- the plain registry pull ----


def registry_pull(
    work: Path, nodes: int, digest: str, registry_pid: int,
    before_go: Callable[[], None] = lambda: None,
) -> tuple[list[float], float, float]:
    """Every node GETs the manifest, then the layer, from docker-registry, all at once.

    Returns (seconds until each node has it, curl CPU-seconds, docker-registry
    CPU-seconds). A transfer the registry cuts off (seen once in ~10 runs: a
    reset after a minute of sharing one link 16 ways) is resumed with a Range
    request, as a registry client would; the time counts from the first request.
    """
    base = f"{registry_url()}/v2/{REPOSITORY}"
    curl = ["curl", "-sS", "-f", "--retry", "3", "--retry-all-errors", "--retry-delay", "0",
            "-H", "Accept: application/vnd.oci.image.manifest.v1+json",
            f"{base}/manifests/{TAG}", "-o", "/dev/null",
            "-C", "-", f"{base}/blobs/{digest}", "-o"]  # -C -: a retry resumes the file
    before_go()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = cpu_seconds(registry_pid)
    start = time.monotonic()
    running = {
        i: subprocess.Popen(
            in_ns(host_ns(i), *curl, str(work / f"registry-copy-{i}")),
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(1, nodes + 1)
    }
    times = wait_for_exits(
        running, start, "registry GET",
        on_exit=lambda i: (work / f"registry-copy-{i}").unlink(),
    )
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    curl_cpu = (children.ru_utime - children_before.ru_utime
                + children.ru_stime - children_before.ru_stime)
    return times, curl_cpu, cpu_seconds(registry_pid) - server_before


# ---- main ----


def run_bench(args: argparse.Namespace) -> int:
    size = args.size_mib * 1024 * 1024
    limit = size * 8 / (args.rate_mbit * 1e6)
    what = (
        f", {args.size_mib} MiB layer (limit {limit:.2f} s), "
        f"{'engine only' if args.engine_only else 'krill agent'}"
    )
    with (
        herd_cluster(args, "krill-bench-herd-", what) as (work, procs),
        prepared_machine(work, not args.cold_memory) as machine,
    ):
        registry_pid = start_servers(procs, work, not args.no_claims)
        files = image_files(work, size)
        digest = push_image(origin_url(), *files)
        push_image(registry_url(), *files)
        for path in files:
            path.unlink()

        from herd_report import Figures

        figures = Figures(args, limit, size, machine=machine)
        footprint = pull_footprint_mib(args.nodes, args.size_mib)

        sent_before = CLUSTER.tx_bytes(0)
        if args.engine_only:
            from herd_engine import swarm_pull

            log("swarm pull (engine only) ...")
            figures.krill, figures.node_cpu = swarm_pull(
                procs, work, args.nodes, digest, not args.no_claims,
                machine.before_go("krill", footprint),
            )
        else:
            from herd_agents import agents_pull

            log("pull through krill agents ...")
            run = agents_pull(
                procs, work, args.nodes, args.profile,
                before_go=machine.before_go("krill", footprint),
            )
            figures.krill = [p.seconds for p in run.pulls]
            figures.node_cpu = run.agent_cpu
            figures.agents = run
        time.sleep(1)  # let the last HAVEs and tracker answers drain before reading the counter
        figures.egress = (CLUSTER.tx_bytes(0) - sent_before) / size
        if args.skip_registry:
            log("plain registry pull skipped (--skip-registry): speed-up not measured")
        else:
            log("plain registry pull ...")
            figures.plain, figures.curl_cpu, figures.registry_cpu = registry_pull(
                work, args.nodes, digest, registry_pid,
                machine.before_go("registry", footprint),
            )
        figures.report()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cluster_arguments(parser, nodes=16, mtu=9000)
    parser.add_argument("--size-mib", type=int, default=64)
    add_cold_memory_argument(parser)
    parser.add_argument(
        "--engine-only",
        action="store_true",
        help="a bare SwarmEngine per node instead of krill agent processes (no HTTP "
        "serving; the pull ends when the blob is verified in the node's store): for tuning",
    )
    parser.add_argument(
        "--no-claims",
        action="store_true",
        help="with --engine-only: nodes take pieces from peers and the origin's seed (a plain "
        "seed then, not super-seeding) only, no HTTP piece claims",
    )
    parser.add_argument(
        "--shared-store",
        action="store_true",
        help="origins on one S3 bucket (SeaweedFS on the origin host): the herd through one "
        "origin, then through two sharing the bucket (agents given both), in one run; "
        "prints each one's p50/p99 and total origin egress (herd_origins)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample agent 1 with py-spy (native frames) during the pull; prints its top "
        "functions and keeps the raw samples in the work dir (with --keep)",
    )
    # Per-node driver modes this script starts inside each node namespace.
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tracker", help=argparse.SUPPRESS)
    parser.add_argument("--digest", help=argparse.SUPPRESS)
    parser.add_argument("--origin", help=argparse.SUPPRESS)
    parser.add_argument("--listen-host", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repository", default=REPOSITORY, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.no_claims and not args.engine_only:
        parser.error("--no-claims needs --engine-only (agents always claim pieces)")
    if args.peer:
        from herd_engine import peer_main

        return asyncio.run(peer_main(args))
    if args.client:
        from herd_agents import client_main

        return asyncio.run(client_main(args))
    if args.shared_store:
        if args.engine_only:
            parser.error("--shared-store runs real agents; it takes no --engine-only")
        from herd_origins import run_shared_store

        return run_as_root(lambda: run_shared_store(args))
    return run_as_root(lambda: run_bench(args))


if __name__ == "__main__":
    sys.exit(main())
