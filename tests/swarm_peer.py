"""One swarm peer in its own process, driven by the swarm tests.

Downloads a blob through a ``SwarmEngine`` (metainfo from ``--metainfo-from``),
streaming the verified prefix as it grows like the agent will, checks the
sha256 of the stored copy, and prints one JSON line. It then keeps seeding
until its stdin closes and prints a second JSON line with its final session
counters. With ``--seed-file`` it instead seeds that file (as-is, in seed
mode, so a corrupt copy is served without noticing) under ``--digest``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import aiohttp

from krill.blobstore import BlobStore
from krill.digests import Digest, sha256_file
from krill.logs import setup_logging
from krill.originclient import fetch_metainfo
from krill.swarm import Download, SwarmEngine, SwarmSettings


def emit(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def stream_to_end(download: Download) -> str:
    """Read the verified prefix as it grows; return the sha256 of what was read."""
    hasher = hashlib.sha256()
    offset = 0
    with download.open() as f:
        while offset < download.size:
            available = await download.wait_available(offset)
            f.seek(offset)
            chunk = f.read(available - offset)
            hasher.update(chunk)
            offset += len(chunk)
    return hasher.hexdigest()


async def stdin_closed() -> None:
    await asyncio.to_thread(sys.stdin.read)


async def wait_for_go() -> None:
    """Block until the driver writes a line: every peer of a herd starts together."""
    await asyncio.to_thread(sys.stdin.readline)


async def main(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    digest = Digest.parse(args.digest)
    store = BlobStore(args.data)
    settings = SwarmSettings(
        tracker_url=args.tracker, listen_host=args.listen_host,
        upload_rate_limit=args.upload_rate_limit,
        origin_urls=(args.origin,) if args.origin else (),
    )
    async with aiohttp.ClientSession() as http:
        metainfo = await fetch_metainfo(http, args.metainfo_from, digest)
    async with SwarmEngine(settings, store) as engine:
        if args.seed_file:
            target = store.path(digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args.seed_file, target)
            await engine.seed(digest, metainfo)
            emit({"seeding": True, "peer_port": engine.peer_port})
        else:
            if args.wait_go:
                emit({"ready": True, "peer_port": engine.peer_port})
                await wait_for_go()
            start = time.monotonic()
            download = await engine.download(digest, metainfo)
            streamed = await stream_to_end(download)
            path = await download.wait_done()
            emit({
                "seconds": time.monotonic() - start,
                "streamed_sha256": streamed,
                "stored_sha256": (await asyncio.to_thread(sha256_file, str(path))).hex,
                "peer_port": engine.peer_port,
            })
        await stdin_closed()
        stats = await engine.fetch_stats()
        emit({"uploaded": stats.uploaded, "downloaded": stats.downloaded,
              "failed_pieces": stats.failed_pieces,
              "origin_feed_bytes": stats.origin_feed_bytes})
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tracker", required=True, help="announce URL")
    parser.add_argument("--metainfo-from", required=True, help="tracker or origin base URL")
    parser.add_argument("--digest", required=True)
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--seed-file", type=Path)
    parser.add_argument("--upload-rate-limit", type=int, default=0)
    parser.add_argument("--origin", help="origin base URL: claim pieces from it over HTTP")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--wait-go", action="store_true",
        help='print {"ready": true}, then start the download on the next stdin line',
    )
    sys.exit(asyncio.run(main(parser.parse_args())))
