"""The herd benchmark's engine-only mode (``--engine-only``): a bare SwarmEngine per node.

Every node runs a ``SwarmEngine`` in a driver process (``--peer`` mode of
``bench_herd.py``), set up as the agent sets it up (HTTP piece claims from
the origin, unless ``--no-claims``): on "go" it fetches metainfo from the
tracker and downloads the blob; the pull time is from "go" to the blob
verified in the node's store. No HTTP serving, no agent: for tuning the
swarm itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herd_common import (
    PEER_PORT,
    LinkSampler,
    Processes,
    cpu_busy,
    cpu_times,
    emit,
    host_ip,
    host_ns,
    in_ns,
    log,
    origin_url,
    read_line,
    tracker_url,
)
from herd_common import (
    driver as driver_command,
)

if TYPE_CHECKING:
    from krill.swarm import Download


def swarm_pull(
    procs: Processes, work: Path, nodes: int, digest: str, claims: bool,
    before_go: Callable[[], None] = lambda: None,
) -> tuple[list[float], float]:
    """Seconds each node took, and the CPU-seconds (user + sys) the drivers used pulling.

    ``before_go`` runs once every node is ready, just before "go" (herd_memory).
    """
    tracker = tracker_url()
    drivers = []
    for index in range(1, nodes + 1):
        cmd = in_ns(
            host_ns(index),
            *driver_command("--peer"),
            "--tracker",
            tracker,
            "--digest",
            digest,
            *(("--origin", origin_url()) if claims else ()),
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
    before_go()
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
    fed = sum(int(r.get("origin_feed_bytes", 0)) for r in results)
    traded = sum(int(r.get("peer_bytes", 0)) for r in results)
    log(f"nodes received {fed / 2**20:.1f} MiB from the origin over HTTP (piece claims) and "
        f"{traded / 2**20:.1f} MiB over the swarm (peers and the origin's seed)")
    return [float(r["seconds"]) for r in results], user + system


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


def log_progress(results: list[dict[str, Any]]) -> None:
    """Mean and slowest node's share of the blob, every PROGRESS_STEP seconds."""
    series = [list(r.get("progress", [])) for r in results]
    steps = max((len(s) for s in series), default=0)
    mean, slowest = [], []
    for step in range(steps):
        values = [s[step] if step < len(s) else 1.0 for s in series]
        mean.append(sum(values) / len(values))
        slowest.append(min(values))
    for name, series_ in (("mean", mean), ("slowest", slowest)):
        shares = " ".join(f"{v:.0%}" for v in series_)
        log(f"nodes' progress every {PROGRESS_STEP}s, {name}: {shares}")


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

