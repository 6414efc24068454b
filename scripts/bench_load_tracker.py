"""Tracker announces per second: ``krill tracker`` against a bare aiohttp handler.

Called by ``scripts/bench_load.py`` (``scripts/bench-load``). Issue 20's goal
is at least 0.7x: the tracker's parsing, peer store and handout may cost at
most that much over the cheapest answer aiohttp can give on the same machine.

The bare server answers every ``GET /announce`` with one fixed bencoded body
and no work. The tracker gets real announces, compact, from 256 peers
(distinct peer ids and ports) in 8 swarms. Both are separate processes that
log nothing per request.

Alone, ``.venv/bin/python scripts/bench_load_tracker.py --compare`` runs only
these two with ``scripts/bench_load.py``'s client and report (same levels,
rounds and ratio line), without docker-registry, the origin or the agent:
the quick check while working on ``krill/tracker``. ``--floor`` adds the
tracker's own app with an announce that does nothing, ``--middlewares`` the bare
handler behind the shared middlewares, ``--redis`` puts the tracker's peers in a
redis-server started for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_from_bytes

from benchlib import free_port

from krill.processes import logged_process as process
from krill.processes import wait_http

SWARMS = 8
PEERS = 256
BARE_ANSWER = b"d8:intervali30e12:min intervali5e5:peers0:e"


def announce_paths() -> list[str]:
    """One announce per peer: each peer in one of ``SWARMS`` swarms, leeching."""
    paths = []
    for peer in range(PEERS):
        info_hash = bytes([peer % SWARMS]) * 20
        peer_id = b"-KA0100-" + b"%012d" % peer
        paths.append(
            f"/announce?info_hash={quote_from_bytes(info_hash)}"
            f"&peer_id={quote_from_bytes(peer_id)}&port={20000 + peer}"
            "&uploaded=0&downloaded=0&left=1000&compact=1&numwant=50"
        )
    return paths


def serve_bare_announce(port: int, middlewares: bool = False) -> None:
    """The baseline: every GET /announce answered with the same bencoded body.

    ``middlewares``: behind the two every Krill service runs (latency
    histogram, request id), to show what they cost on their own.
    """
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from krill.httpmetrics import latency_middleware, request_histogram
    from krill.requestid import install_request_ids

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=BARE_ANSWER, content_type="text/plain")

    if middlewares:
        histogram = request_histogram("bare_request_seconds", CollectorRegistry())
        app = web.Application(middlewares=[latency_middleware(histogram)])
        install_request_ids(app)
    else:
        app = web.Application()
    app.router.add_get("/announce", handler)
    app.router.add_get("/health", handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_tracker_floor(port: int) -> None:
    """``krill tracker``'s own app (routes, request ids, latency histogram, metrics) whose
    announce answers the bare handler's body and does nothing else: what the tracker
    would cost with a free announce path, the floor of its CPU per announce."""
    from aiohttp import web

    from krill.tracker import server
    from krill.tracker.config import TrackerConfig

    def free_plain_answer(request: web.Request, state: server.AnnounceState) -> web.Response:
        return web.Response(body=BARE_ANSWER, content_type="text/plain")

    server.plain_answer = free_plain_answer  # the announce routes' handlers call it first
    config = TrackerConfig(listen=f"127.0.0.1:{port}", origin=["http://127.0.0.1:9"])
    web.run_app(server.create_app(config), host="127.0.0.1", port=port, access_log=None,
                print=None)  # fmt: skip


@contextlib.contextmanager
def redis_server(work: Path) -> Iterator[str]:
    """A redis-server on loopback without persistence, for ``--redis``; yields its URL."""
    port = free_port()
    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    command += ["--appendonly", "no", "--dir", str(work)]
    with process(command, work / "redis.log"):
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not listen on {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"


@contextlib.contextmanager
def trackers(
    work: Path, origin: str, redis: str | None = None
) -> Iterator[tuple[tuple[str, int], tuple[str, int]]]:
    """``krill tracker`` (memory store, or ``redis``) and the bare server: ((url, pid), ...)."""
    work.mkdir(parents=True, exist_ok=True)
    tracker_port, bare_port = free_port(), free_port()
    tracker_cmd = [sys.executable, "-m", "krill.cli", "tracker", "--listen"]
    tracker_cmd += [f"127.0.0.1:{tracker_port}", "--origin", origin, "--log-level", "warning"]
    tracker_cmd += ["--redis", redis] if redis else []
    bare_cmd = [sys.executable, __file__, str(bare_port)]
    with (
        process(tracker_cmd, work / "tracker.log") as tracker,
        process(bare_cmd, work / "bare-announce.log") as bare,
    ):
        tracker_url, bare_url = f"http://127.0.0.1:{tracker_port}", f"http://127.0.0.1:{bare_port}"
        wait_http(f"{tracker_url}/health", tracker, timeout=60, name="krill tracker")
        wait_http(f"{bare_url}/health", bare, timeout=60, name="bare announce server")
        yield (tracker_url, tracker.pid), (bare_url, bare.pid)


async def compare(argv: list[str]) -> None:
    """Tracker vs bare handler only, measured and reported as ``scripts/bench_load.py`` does."""
    import tempfile

    from bench_load import Call, Server, measure, report  # imports this module: not at the top

    parser = argparse.ArgumentParser(description="krill tracker vs a bare aiohttp handler")
    parser.add_argument("--compare", action="store_true", required=True)
    parser.add_argument("--levels", default="1,16,64", help="concurrency levels, comma-separated")
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per level")
    parser.add_argument(
        "--middlewares", action="store_true",
        help="also the bare handler behind Krill's latency and request-id middlewares",
    )  # fmt: skip
    parser.add_argument(
        "--floor", action="store_true",
        help="also the tracker's own app with an announce handler that does nothing",
    )  # fmt: skip
    parser.add_argument(
        "--redis", action="store_true",
        help="the tracker keeps its peers in a redis-server started for the run",
    )  # fmt: skip
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-tracker-") as tmp, contextlib.ExitStack() as up:
        redis = up.enter_context(redis_server(Path(tmp))) if args.redis else None
        # The origin is never asked: announces need no metainfo.
        with trackers(Path(tmp), "http://127.0.0.1:9", redis) as ((tracker, tpid), (bare, bpid)):
            mix = [Call("GET", path) for path in announce_paths()]
            servers = [
                Server("krill-tracker", tracker, tpid, mix),
                Server("bare-aiohttp", bare, bpid, mix),
            ]
            with contextlib.ExitStack() as stack:
                extras = [("middlewares", "bare+middlewares")] if args.middlewares else []
                extras += [("floor", "tracker-free-handler")] if args.floor else []
                for kind, name in extras:
                    port = free_port()
                    command = [sys.executable, __file__, str(port), kind]
                    proc = stack.enter_context(process(command, Path(tmp) / f"{kind}.log"))
                    url = f"http://127.0.0.1:{port}"
                    wait_http(f"{url}/health", proc, timeout=60, name=name)
                    servers.append(Server(name, url, proc.pid, mix))
                await measure(servers, levels, args.requests, args.rounds)
                print(
                    f"{args.requests} requests per round, {args.rounds} rounds per level; "
                    f"compact announces of {PEERS} peers in {SWARMS} swarms"
                )
                print(report(servers, levels))  # reads peak RSS: while the servers run


if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1].isdigit():
        if sys.argv[2:3] == ["floor"]:
            serve_tracker_floor(int(sys.argv[1]))
        else:
            serve_bare_announce(int(sys.argv[1]), middlewares=sys.argv[2:3] == ["middlewares"])
    else:
        asyncio.run(compare(sys.argv[1:]))
