"""Agent blob serving: cached-blob GET throughput vs. a bare aiohttp FileResponse, and
time-to-first-byte for an uncached blob vs. the time to download all of it.

Called by ``scripts/bench-serve`` (or run directly with the venv's python).
Everything runs on loopback as real processes: an origin, a tracker, one
agent, and a bare aiohttp server that answers every GET with
``web.FileResponse`` of the agent's cached copy of the blob (the same file,
so the same page cache). The client is a minimal HTTP/1.1 reader that counts
and drops the body, so it measures the servers rather than itself.

Figures:
* uncached: the first GET of a ``--ttfb-size-mib`` blob through the agent's
  registry endpoint: time to the first body byte and to the last one, and
  which source the agent used (swarm or origin HTTP fallback);
* cached: median MB/s over ``--rounds`` alternating rounds of ``--requests``
  GETs, ``--concurrency`` at a time, agent and bare server; the ratio
  agent / bare (goal >= 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from benchlib import free_port, one_round, read_metrics, timed_get, write_random_blob

from krill.processes import logged_process as process
from krill.processes import wait_http
from krill.up import Addresses, service_commands

REPO = "bench/agent"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class AgentServeResult:
    size_mib: int
    ttfb_seconds: float
    full_seconds: float
    uncached_source: str
    agent_mb_s: float
    bare_mb_s: float
    agent_rounds: list[float]
    bare_rounds: list[float]

    @property
    def ratio(self) -> float:
        return self.agent_mb_s / self.bare_mb_s

    def report(self) -> str:
        return "\n".join(
            [
                f"agent, uncached {self.size_mib} MiB blob (via {self.uncached_source}): "
                f"first byte after {self.ttfb_seconds * 1000:.0f} ms, "
                f"whole blob after {self.full_seconds:.2f} s "
                f"(TTFB = {100 * self.ttfb_seconds / self.full_seconds:.1f}% of the download)",
                f"agent cached-blob GET   {self.agent_mb_s:8.0f} MB/s  (rounds: "
                + ", ".join(f"{r:.0f}" for r in self.agent_rounds)
                + ")",
                f"bare aiohttp FileResponse {self.bare_mb_s:6.0f} MB/s  (rounds: "
                + ", ".join(f"{r:.0f}" for r in self.bare_rounds)
                + ")",
                f"ratio agent/bare: {self.ratio:.2f}x (goal >= 0.8x)",
            ]
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ttfb-size-mib", type=int, default=256, help="uncached blob size")
    parser.add_argument("--requests", type=int, default=8, help="GETs per server per round")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel GETs")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per server")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON too")
    parser.add_argument(
        "--bare-file-server", nargs=2, metavar=("FILE", "PORT"), help=argparse.SUPPRESS
    )  # internal: run the baseline server
    return parser.parse_args(argv)


# ---- the baseline server --------------------------------------------------------------


def serve_bare_file(path: str, port: int) -> None:
    """The baseline: every GET answered with aiohttp's FileResponse of ``path``."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path, chunk_size=1 << 20)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ---- processes ----------------------------------------------------------------------


@contextlib.contextmanager
def cluster(work: Path) -> Iterator[dict[str, str]]:
    """origin (seeding through the tracker), tracker, agent, started as ``krill up`` starts
    them; yields their base URLs."""
    addresses = Addresses(
        **{name: f"127.0.0.1:{free_port()}" for name in ("origin", "tracker", "agent", "registry")},
        data=str(work),
    )
    urls = {
        name: f"http://{getattr(addresses, name)}"
        for name in ("origin", "tracker", "agent", "registry")
    }
    with contextlib.ExitStack() as stack:
        for name, argv, health in service_commands(addresses, work):
            command = [sys.executable, "-m", "krill.cli", *argv, "--log-level", "warning"]
            proc = stack.enter_context(process(command, work / f"{name}.log"))
            wait_http(health, proc, timeout=60, name=name)
        yield urls


def push_blob(origin: str, path: Path, digest: str) -> None:
    """Monolithic upload (POST then PUT with the body) to the origin."""
    start = urllib.request.Request(f"{origin}/v2/{REPO}/blobs/uploads/", method="POST", data=b"")
    with urllib.request.urlopen(start, timeout=60) as response:
        location = response.headers["Location"]
    if location.startswith("/"):
        location = origin + location
    sep = "&" if "?" in location else "?"
    with open(path, "rb") as f:
        put = urllib.request.Request(
            f"{location}{sep}digest={digest}",
            method="PUT",
            data=f,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(path.stat().st_size),
            },
        )
        with urllib.request.urlopen(put, timeout=600) as response:
            if response.status != 201:
                raise RuntimeError(f"push answered {response.status}")


# ---- the benchmark ------------------------------------------------------------------


async def bench_agent(
    size_mib: int, requests: int, concurrency: int, rounds: int, work: Path
) -> AgentServeResult:
    """Run the whole measurement; scripts/bench-serve calls this after its own."""
    size = size_mib << 20
    work.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - set-up, nothing runs yet
    blob = work / "blob.bin"
    digest = write_random_blob(blob, size)
    with cluster(work) as urls:
        push_blob(urls["origin"], blob, digest)
        blob.unlink()
        url = f"{urls['registry']}/v2/{REPO}/blobs/{digest}"
        got, ttfb, full = await timed_get(url)
        if got != size:
            raise RuntimeError(f"uncached GET returned {got} of {size} bytes")
        served = read_metrics(urls["agent"])
        source = (
            "swarm"
            if served.get('krill_agent_served_bytes_total{source="swarm"}', 0)
            else "origin HTTP fallback"
        )
        cached = work / "agent" / "blobs" / "blobs" / "sha256" / digest[7:9] / digest[7:]
        for _ in range(100):  # the cache index is updated right after the commit
            if cached.exists():
                break
            await asyncio.sleep(0.05)
        bare_port = free_port()
        with process(
            [sys.executable, __file__, "--bare-file-server", str(cached), str(bare_port)],
            work / "bare.log",
        ) as bare:
            bare_url = f"http://127.0.0.1:{bare_port}/blob"
            wait_http(bare_url, bare, timeout=60)
            await one_round(url, size, concurrency, concurrency)  # warm both
            await one_round(bare_url, size, concurrency, concurrency)
            agent_rounds, bare_rounds = [], []
            for _ in range(rounds):
                agent_rounds.append(await one_round(url, size, requests, concurrency))
                bare_rounds.append(await one_round(bare_url, size, requests, concurrency))
    return AgentServeResult(
        size_mib,
        ttfb,
        full,
        source,
        statistics.median(agent_rounds),
        statistics.median(bare_rounds),
        agent_rounds,
        bare_rounds,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare_file_server:
        serve_bare_file(args.bare_file_server[0], int(args.bare_file_server[1]))
        return 0
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="krill-bench-agent-"))
        )
        work.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(
            bench_agent(args.ttfb_size_mib, args.requests, args.concurrency, args.rounds, work)
        )
    print(result.report())
    if args.json:
        print(json.dumps({**asdict(result), "ratio": result.ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
