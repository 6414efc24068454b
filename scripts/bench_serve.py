"""Blob serving throughput: a Krill origin vs. docker-registry, same blob, same client.

Run through ``scripts/bench-serve`` (which installs what is needed). Both
servers run on loopback as real processes; one blob of ``--size-mib`` random
bytes is pushed to each, fetched once to warm the page cache, then fetched
``--requests`` times with ``--concurrency`` parallel GETs per round, for
``--rounds`` alternating rounds. Prints MB/s (10^6 bytes/s) per server (the
median round) and the ratio origin / docker-registry.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import aiohttp
from bench_agent_serve import bench_agent
from benchlib import (
    cpu_seconds,
    docker_registry,
    krill_origin,
    one_round,
    run_bench,
    timed_get,
    write_random_blob,
)

REPO = "bench/blob"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512, help="blob size in MiB")
    parser.add_argument("--requests", type=int, default=8, help="GETs per server per round")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel GETs")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per server")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    parser.add_argument(
        "--agent-ttfb-size-mib",
        type=int,
        default=256,
        help="uncached blob size for the agent's time-to-first-byte figure",
    )
    parser.add_argument("--no-agent", action="store_true", help="skip the agent's figures")
    return parser.parse_args(argv)


async def push(session: aiohttp.ClientSession, base: str, path: Path, digest: str) -> None:
    async with session.post(f"{base}/v2/{REPO}/blobs/uploads/") as resp:
        if resp.status != 202:
            raise RuntimeError(f"{base}: upload start failed: {resp.status} {await resp.text()}")
        location = resp.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    with open(path, "rb") as f:  # noqa: ASYNC230 - aiohttp reads it in a thread
        headers = {"Content-Type": "application/octet-stream"}
        async with session.put(f"{location}{sep}digest={digest}", data=f, headers=headers) as r:
            if r.status != 201:
                raise RuntimeError(f"{base}: upload failed: {r.status} {await r.text()}")


async def bench(args: argparse.Namespace, workdir: Path) -> int:
    size = args.size_mib << 20
    blob = workdir / "blob.bin"
    digest = write_random_blob(blob, size)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    with (
        docker_registry(workdir / "registry") as (registry, registry_pid),
        krill_origin(workdir / "origin") as (origin, origin_pid),
    ):
        pids = {"docker-registry": registry_pid, "krill-origin": origin_pid}
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            servers = {"docker-registry": registry, "krill-origin": origin}
            for base in servers.values():  # each answered /v2/ when it started
                await push(session, base, blob, digest)
            blob.unlink()
            urls = {name: f"{base}/v2/{REPO}/blobs/{digest}" for name, base in servers.items()}
            for url in urls.values():
                await timed_get(url)  # warm the page cache
            rates: dict[str, list[float]] = {name: [] for name in urls}
            cpu = dict.fromkeys(urls, 0.0)
            for _ in range(args.rounds):
                for name, url in urls.items():
                    before = cpu_seconds(pids[name])
                    rate = await one_round(url, size, args.requests, args.concurrency)
                    cpu[name] += cpu_seconds(pids[name]) - before
                    rates[name].append(rate)
    served_gib = args.rounds * args.requests * size / (1 << 30)
    print(
        f"blob {args.size_mib} MiB, {args.requests} GETs per round, concurrency "
        f"{args.concurrency}, {args.rounds} rounds (median shown)"
    )
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(
            f"{name:16s} {medians[name]:8.0f} MB/s   (rounds: {rounds}; "
            f"server CPU {cpu[name] / served_gib:.3f} s/GiB)"
        )
    ratio = medians["krill-origin"] / medians["docker-registry"]
    print(f"ratio origin/docker-registry: {ratio:.2f}x (goal >= 1.0x)")
    if not args.no_agent:
        agent = await bench_agent(
            args.agent_ttfb_size_mib,
            args.requests,
            args.concurrency,
            args.rounds,
            workdir / "agent-bench",
        )
        print(agent.report())
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_bench(bench, parse_args(argv), "krill-bench-serve-")


if __name__ == "__main__":
    sys.exit(main())
