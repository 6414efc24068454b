"""The whole-image herd: containerd on N nodes pulls a multi-layer image at once.

The figure a cluster operator cares about is not one layer's bytes at the
client but "every node can start the container": containerd has resolved the
tag, fetched the config and every layer, and unpacked them into snapshots.
``ctr images pull`` returns only after the unpack, so its exit is the end of
a node's pull; the snapshots are checked afterwards.

On the herd cluster of ``bench_herd`` (namespaces, one bridge, every link
shaped with ``tc tbf``; origin, tracker and docker-registry on h0), each
node gets its own ``krill agent`` (README's command, the chart's config,
``herd_agents.agent_command``) and its own containerd (``tests/containerd``:
private root, state and socket, the ``native`` snapshotter). The image is
built in-process (``tests/imagebuild``: a few gzip layers of random files,
so neither gzip nor a delta shrinks them) and pushed to the origin and the
docker-registry. Two phases, each with fresh containerds so nothing is
cached:

1. Krill: every node's ``ctr images pull --hosts-dir`` with the hosts.toml
   that ``krill agent containerd-config`` writes (the agent as the mirror of
   the origin), all at once;
2. plain registry: every node's ``ctr images pull --plain-http`` straight
   from docker-registry, all at once.

``ctr`` runs in the node's namespace (the client side of ``ctr images pull``
does the fetching); the containerd daemons run in this namespace, reached
only through their unix sockets, and do the unpacking.

As ``bench_herd``, the run pauses the VM's free page reporting and backs, just
before each phase's "go", the page cache that phase will write (``herd_memory``;
``--cold-memory`` does neither).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import cpu_seconds
from herd_agents import agent_command, served_from
from herd_common import (
    AGENT_CONTROL_PORT,
    AGENT_REGISTRY_PORT,
    CLUSTER,
    ORIGIN_PORT,
    REGISTRY_PORT,
    Processes,
    add_cluster_arguments,
    agents_start_timeout,
    herd_cluster,
    host_ip,
    host_ns,
    in_ns,
    krill,
    log,
    origin_url,
    percentile,
    registry_url,
    run_as_root,
    sh,
    start_servers,
    wait_for_exits,
)
from herd_memory import (
    PreparedMachine,
    add_cold_memory_argument,
    prepared_machine,
    pull_footprint_mib,
)

from tests import containerd
from tests.imagebuild import Image, build_image, gzip_bytes, random_files

REPOSITORY, TAG = "bench/image", "v1"
GiB = 1024**3
# ctr's own limit on one pull: far above what 8 x 100 MiB over a 100 Mbit/s link takes.
PULL_TIMEOUT = 900.0


@dataclass
class ImageFigures:
    """One run's results; ``report`` prints them (text, then one JSON line)."""

    args: argparse.Namespace
    image_bytes: int
    layers: int
    krill: list[float] = field(default_factory=list)  # seconds per node, "go" to ctr's exit
    plain: list[float] = field(default_factory=list)
    agent_cpu: float = float("nan")
    egress: float = float("nan")  # origin host's sent bytes in the Krill phase / image bytes
    sources: list[str] = field(default_factory=list)
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    machine: PreparedMachine | None = None  # herd_memory: what was done before each "go"

    def back_memory(self, phase: str) -> None:
        """Just before a phase's "go": back the page cache it will write (herd_memory).

        Per node: the agent's copy of each layer, containerd's, and the native
        snapshotter's unpacked snapshots (each copies the ones below it): ~4 copies.
        """
        if self.machine is not None:
            mib = pull_footprint_mib(self.args.nodes, self.image_bytes >> 20, copies=4)
            self.machine.back(phase, mib)

    def report(self) -> None:
        limit = self.image_bytes * 8 / (self.args.rate_mbit * 1e6)
        rows = [("krill", self.krill), ("registry", self.plain)]
        load = " ".join(f"{v:.1f}" for v in os.getloadavg())
        start = " ".join(f"{v:.1f}" for v in self.load_start)
        lines = [
            f"image herd: nodes={self.args.nodes} rate={self.args.rate_mbit}Mbit/s "
            f"mtu={self.args.mtu} layers={self.layers} image={self.image_bytes / 2**20:.1f}MiB "
            f"limit={limit:.2f}s cpus={os.cpu_count()} load(1/5/15 min) at start={start} "
            f"at end={load}",
        ]
        record: dict[str, object] = {
            "mode": "image",
            "nodes": self.args.nodes,
            "image_bytes": self.image_bytes,
            "layers": self.layers,
            "limit_s": limit,
            "load_start": self.load_start,
            "load_end": os.getloadavg(),
            "origin_egress_x": self.egress,
            "agent_cpu_s_per_gib": self.agent_cpu / (self.args.nodes * self.image_bytes / GiB),
            "served_from": self.sources,
        }
        if self.machine is not None:
            lines += self.machine.lines(name for name, times in rows if times)
        for name, times in rows:
            if not times:
                continue
            p50, p99, worst = percentile(times, 50), percentile(times, 99), max(times)
            lines.append(
                f"{name:9s} every node unpacked: p50 {p50:6.2f}s ({p50 / limit:.2f}x limit)  "
                f"p99 {p99:6.2f}s ({p99 / limit:.2f}x)  max {worst:6.2f}s"
            )
            record[f"{name}_s"] = sorted(times)
        if self.krill and self.plain:
            ratios = [percentile(self.plain, p) / percentile(self.krill, p) for p in (50, 99)]
            ratios.append(max(self.plain) / max(self.krill))
            lines.append("registry / krill: p50 {:.1f}x  p99 {:.1f}x  max {:.1f}x".format(*ratios))
            record["speedup_p50_p99_max"] = ratios
        lines.append(
            f"origin egress during the krill pull: {self.egress:.2f}x image; agent CPU "
            f"{record['agent_cpu_s_per_gib']:.2f} s per GiB pulled; agents served from: "
            + ", ".join(self.sources)
        )
        print("\n".join(lines))
        print(json.dumps(record))


def layer_sizes(text: str) -> list[int]:
    """``8,16,24`` (MiB) as sizes in MiB; each layer is that many 1 MiB random files."""
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("layer sizes are whole MiB, at least 1, comma-separated")
    return sizes


def make_image(sizes_mib: list[int]) -> Image:
    """Layers of random 1 MiB files, gzip level 1 (random bytes do not shrink at any level)."""
    files = [random_files(seed, count=mib, size=1 << 20) for seed, mib in enumerate(sizes_mib)]
    return build_image(files, compressor=lambda tar: gzip_bytes(tar, level=1))


def push_image(base: str, image: Image, work: Path) -> None:
    """Blobs (config, layers), then the manifest, from h0, as ``bench_herd`` pushes."""
    blobs = work / "blobs"
    blobs.mkdir(exist_ok=True)
    for blob in image.blobs():
        path = blobs / blob.digest.split(":", 1)[1]
        if not path.exists():
            path.write_bytes(blob.data)
        CLUSTER.push_blob(0, base, REPOSITORY, path, blob.digest)
    manifest = blobs / "manifest.json"
    manifest.write_bytes(image.manifest.data)
    CLUSTER.push_manifest(0, base, REPOSITORY, TAG, manifest, image.manifest.media_type)


@contextlib.contextmanager
def containerds(work: Path, phase: str, nodes: int) -> Iterator[dict[int, containerd.Containerd]]:
    """A fresh containerd per node (own root, state and socket); all stopped at the end."""
    with contextlib.ExitStack() as stack:
        yield {
            i: stack.enter_context(containerd.running_containerd(work / f"ctrd-{phase}-{i}"))
            for i in range(1, nodes + 1)
        }


def agent_hosts_dir(work: Path, index: int) -> Path:
    """The hosts.toml ``krill agent containerd-config`` writes: the agent mirrors the origin."""
    hosts = work / f"hosts-{index}"
    origin_host = f"{host_ip(0)}:{ORIGIN_PORT}"
    sh(
        *krill(
            "agent",
            "containerd-config",
            "--registry",
            f"{origin_host}=http://{origin_host}",
            "--agent",
            f"127.0.0.1:{AGENT_REGISTRY_PORT}",
            "--dir",
            str(hosts),
        )
    )
    return hosts


def ctr_pull(ctrd: containerd.Containerd, reference: str, *source: str) -> list[str]:
    """``ctr images pull`` (fetch, then unpack with native) against one node's containerd."""
    return [
        "ctr",
        "--address",
        str(ctrd.socket),
        "--namespace",
        containerd.NAMESPACE,
        "images",
        "pull",
        "--snapshotter",
        "native",
        *source,
        reference,
    ]


def herd_pull(commands: dict[int, list[str]]) -> list[float]:
    """Start every node's pull at once; seconds until each ``ctr`` exited successfully."""
    start = time.monotonic()
    running = {
        i: subprocess.Popen(
            in_ns(host_ns(i), *cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for i, cmd in commands.items()
    }
    return wait_for_exits(running, start, "ctr pull", timeout=PULL_TIMEOUT)


def check_unpacked(ctrds: dict[int, containerd.Containerd], layers: int) -> None:
    """Every node has one committed snapshot per layer: the image is ready to run."""
    for i, ctrd in ctrds.items():
        snapshots = ctrd.snapshots()
        if len(snapshots) < layers:
            raise RuntimeError(f"node {i} has {len(snapshots)} snapshots for {layers} layers")


def krill_phase(procs: Processes, work: Path, figures: ImageFigures) -> None:
    """Agents up, containerds fresh, then every node pulls through its agent at once."""
    nodes = figures.args.nodes
    hosts = range(1, nodes + 1)
    agents = {
        i: procs.start(in_ns(host_ns(i), *agent_command(i, work)), work / f"agent{i}.log")
        for i in hosts
    }
    timeout = agents_start_timeout(nodes)
    for i in hosts:
        CLUSTER.wait_http(i, f"http://127.0.0.1:{AGENT_CONTROL_PORT}/health", timeout=timeout)
    reference = f"{host_ip(0)}:{ORIGIN_PORT}/{REPOSITORY}:{TAG}"
    with containerds(work, "krill", nodes) as ctrds:
        commands = {
            i: ctr_pull(ctrds[i], reference, "--hosts-dir", str(agent_hosts_dir(work, i)))
            for i in hosts
        }
        cpu_before = sum(cpu_seconds(agent.pid) for agent in agents.values())
        figures.back_memory("krill")
        sent_before = CLUSTER.tx_bytes(0)
        log(f"{nodes} agents and containerds ready; go (through the agents)")
        figures.krill = herd_pull(commands)
        figures.agent_cpu = sum(cpu_seconds(agent.pid) for agent in agents.values()) - cpu_before
        time.sleep(1)  # let the last HAVEs and tracker answers drain before reading the counter
        figures.egress = (CLUSTER.tx_bytes(0) - sent_before) / figures.image_bytes
        check_unpacked(ctrds, figures.layers)
    figures.sources = sorted({served_from(i) for i in hosts})


def registry_phase(work: Path, figures: ImageFigures) -> None:
    """Fresh containerds; every node pulls straight from docker-registry at once."""
    nodes = figures.args.nodes
    reference = f"{host_ip(0)}:{REGISTRY_PORT}/{REPOSITORY}:{TAG}"
    with containerds(work, "registry", nodes) as ctrds:
        commands = {i: ctr_pull(ctrds[i], reference, "--plain-http") for i in ctrds}
        figures.back_memory("registry")
        log(f"{nodes} containerds ready; go (straight from docker-registry {registry_url()})")
        figures.plain = herd_pull(commands)
        check_unpacked(ctrds, figures.layers)


def run_image_herd(
    args: argparse.Namespace, procs: Processes, work: Path, machine: PreparedMachine
) -> ImageFigures:
    """Build and push the image, then the two phases; the cluster and servers are up."""
    sizes = layer_sizes(args.layers_mib)
    image = make_image(sizes)
    push_image(origin_url(), image, work)
    push_image(registry_url(), image, work)
    total = sum(len(blob.data) for blob in image.blobs())
    log(
        f"image: {len(sizes)} layers ({args.layers_mib} MiB of random files), "
        f"{total / 2**20:.1f} MiB of blobs"
    )
    figures = ImageFigures(
        args, total, len(sizes), load_start=os.getloadavg(), machine=machine
    )
    krill_phase(procs, work, figures)
    if not args.skip_registry:
        registry_phase(work, figures)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cluster_arguments(parser, nodes=8, mtu=1500)
    parser.add_argument(
        "--layers-mib",
        default="8,16,24,48",
        help="layer sizes in MiB, smallest first (default 8,16,24,48: 96 MiB; the native "
        "snapshotter copies every lower layer into each new snapshot)",
    )
    add_cold_memory_argument(parser)
    args = parser.parse_args()
    layer_sizes(args.layers_mib)  # a bad list fails before the cluster is built

    def run() -> int:
        what = f" (image herd, {args.layers_mib} MiB layers)"
        with (
            herd_cluster(args, "krill-bench-image-herd-", what) as (work, procs),
            prepared_machine(work, not args.cold_memory) as machine,
        ):
            start_servers(procs, work, claims=True)
            figures = run_image_herd(args, procs, work, machine)
            figures.report()
        return 0

    return run_as_root(run)


if __name__ == "__main__":
    sys.exit(main())
