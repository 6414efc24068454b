"""The tracker's CPU per announce, for the herd's scaling model (docs/benchmarks.md).

Starts ``krill tracker`` (memory store) on loopback and sends it announces
as a herd's agents do, from ``--peers`` distinct peers into ``--swarms``
swarms (``compact=1``, ``numwant`` 50), ``--concurrency`` at a time, then
prints announces per second and the tracker's user + sys CPU per announce.
The client shares the machine's cores, so the rate is a floor; the CPU per
announce is the figure the model scales.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote_from_bytes

import aiohttp
from benchlib import cpu_seconds, free_port

from krill.processes import logged_process, wait_http


def announce_url(base: str, swarm: int, peer: int) -> str:
    info_hash = swarm.to_bytes(20, "big")
    peer_id = b"-KR0001-" + peer.to_bytes(12, "big")
    return (
        f"{base}/announce?info_hash={quote_from_bytes(info_hash)}"
        f"&peer_id={quote_from_bytes(peer_id)}&port={6882 + peer % 1000}"
        "&uploaded=0&downloaded=0&left=1000&compact=1&numwant=50"
    )


async def hammer(base: str, total: int, peers: int, swarms: int, concurrency: int) -> float:
    """Send ``total`` announces; seconds taken. Every answer must be a 200."""
    queue = iter(range(total))

    async def worker(http: aiohttp.ClientSession) -> None:
        for n in queue:
            peer = n % peers
            async with http.get(announce_url(base, peer % swarms, peer)) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"announce answered {response.status}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        start = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--announces", type=int, default=20000)
    parser.add_argument("--peers", type=int, default=2000)
    parser.add_argument("--swarms", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as work:
        cmd = [
            sys.executable,
            "-m",
            "krill.cli",
            "tracker",
            "--listen",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ]
        with logged_process(cmd, Path(work) / "tracker.log") as tracker:
            wait_http(f"{base}/health")
            # A first pass fills the swarms, as a herd's first announces do.
            asyncio.run(hammer(base, args.peers, args.peers, args.swarms, args.concurrency))
            before = cpu_seconds(tracker.pid)
            seconds = asyncio.run(
                hammer(base, args.announces, args.peers, args.swarms, args.concurrency)
            )
            cpu = cpu_seconds(tracker.pid) - before
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"tracker: {args.announces} announces from {args.peers} peers in {args.swarms} swarms, "
        f"{args.concurrency} concurrent: {args.announces / seconds:.0f}/s, "
        f"{cpu / args.announces * 1000:.3f} ms tracker CPU per announce "
        f"(load {load}, cpus {os.cpu_count()})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
