"""Concurrent pushes and pulls: the origin and docker-registry under ``--pushes`` at once.

Called by ``scripts/bench_load.py`` (``scripts/bench-load``). Issue 20 asks for
the origin "under 100 concurrent pushes and pulls": each of ``count`` clients
pushes its own blob (POST, then PUT with the body) and then pulls it back,
all at the same time, against each server in turn. Reported: errors (the goal
is none), wall time, p50/p99 of one push and one pull, and whether every blob
came back byte-exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass

import aiohttp

REPO = "bench/push"


@dataclass
class PushRun:
    server: str
    count: int
    errors: list[str]
    wall: float
    pushes: list[float]
    pulls: list[float]

    def report(self) -> str:
        def pct(values: list[float], q: float) -> str:
            if not values:
                return "-"
            ordered = sorted(values)
            return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.2f} s"

        first = f" (first: {self.errors[0]})" if self.errors else ""
        return (
            f"  {self.server:16s} {self.count} concurrent push+pull: {len(self.errors)} errors"
            f"{first}, all done in {self.wall:.2f} s; push p50 {pct(self.pushes, 0.5)} "
            f"p99 {pct(self.pushes, 0.99)}, pull p50 {pct(self.pulls, 0.5)} "
            f"p99 {pct(self.pulls, 0.99)}"
        )


async def push_then_pull(
    session: aiohttp.ClientSession, base: str, data: bytes
) -> tuple[float, float]:
    """Push ``data`` as a blob, pull it back and compare; (push seconds, pull seconds)."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = time.perf_counter()
    async with session.post(f"{base}/v2/{REPO}/blobs/uploads/") as response:
        if response.status != 202:
            raise RuntimeError(f"upload start {response.status}: {await response.text()}")
        location = response.headers["Location"]
    location = base + location if location.startswith("/") else location
    sep = "&" if "?" in location else "?"
    headers = {"Content-Type": "application/octet-stream"}
    async with session.put(f"{location}{sep}digest={digest}", data=data, headers=headers) as r:
        if r.status != 201:
            raise RuntimeError(f"upload {r.status}: {await r.text()}")
    pushed = time.perf_counter()
    async with session.get(f"{base}/v2/{REPO}/blobs/{digest}") as response:
        body = await response.read()
        if response.status != 200 or body != data:
            raise RuntimeError(f"pull {response.status}, {len(body)} of {len(data)} bytes")
    return pushed - started, time.perf_counter() - pushed


async def run_pushes(server: str, base: str, count: int, size: int) -> PushRun:
    blobs = [os.urandom(size) for _ in range(count)]
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=count)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(push_then_pull(session, base, data) for data in blobs), return_exceptions=True
        )
        wall = time.perf_counter() - started
    errors = [repr(r)[:200] for r in results if isinstance(r, BaseException)]
    done = [r for r in results if not isinstance(r, BaseException)]
    return PushRun(server, count, errors, wall, [p for p, _ in done], [q for _, q in done])
