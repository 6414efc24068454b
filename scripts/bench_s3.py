"""Blob PUT and GET through a Krill origin on S3 vs. docker-registry's S3 driver, one store.

Run through ``scripts/bench-s3`` (which installs what is needed). One
SeaweedFS (``weed server -s3`` on loopback, started as ``tests/s3_fixtures``
does) holds two buckets: a Krill origin with ``--storage s3://...`` writes to
one, docker-registry 2.8 with its ``s3`` driver (``redirect: disable``, so it
serves the bytes itself, as Krill does, instead of a 307 to the store) to the
other. One blob of ``--size-mib`` random bytes is pushed to each (a
monolithic PUT, timed: both answer 201 only once the blob is in the bucket,
so this is their multipart PUT rate), then ``--requests`` GETs, one at a
time, alternating per server, for ``--rounds`` rounds:

* **cold**: Krill with its local copy removed first, so it reads the object
  from the bucket once, into its local store and out to the client at once
  (``krill/origin/storage_fill.py``: the response ends after the digest
  matched, the copy is in place when it does); docker-registry always reads
  from S3;
* **warm**: Krill from its local read-through copy (sendfile).

Prints MB/s (10^6 bytes/s, the median round) and the ratios Krill /
docker-registry, with the load average: a shared 2-core box.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from bench_serve import REPO, push
from benchlib import free_port, one_round, write_random_blob
from yarl import URL

from krill.processes import logged_process as process
from krill.processes import tail, wait_http
from krill.s3sign import Credentials

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # tests.s3_fixtures: the SeaweedFS the S3 tests use
    sys.path.insert(0, str(ROOT))

from tests import s3_fixtures  # noqa: E402
from tests.polling import until_sync  # noqa: E402
from tests.s3_fixtures import SeaweedFS  # noqa: E402

KRILL_BUCKET = "krill-bench"
REGISTRY_BUCKET = "registry-bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="blob size in MiB")
    parser.add_argument("--requests", type=int, default=2, help="GETs per server per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    return parser.parse_args(argv)


@contextlib.contextmanager
def seaweedfs_server(root: Path, buckets: list[str]) -> Iterator[list[SeaweedFS]]:
    """One ``weed server -s3`` with the test fixture's command and identity, and these
    buckets in it (the fixture's own readiness check: each bucket accepts a write)."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    taken: set[int] = set()
    port = s3_fixtures.free_port_pair(taken)
    credentials = Credentials(s3_fixtures.ACCESS_KEY, s3_fixtures.SECRET_KEY)
    stores = [SeaweedFS(URL(f"http://127.0.0.1:{port}"), b, credentials, root) for b in buckets]
    log = root / "weed.log"
    # The fixture's own helpers, so the command and readiness check are written once.
    cmd = s3_fixtures._weed_command(root, port, taken)
    with process(cmd, log, grace=10) as proc:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited:\n{tail(log)}")
            return all(s3_fixtures._bucket_writable(s) for s in stores)

        until_sync(ready, f"SeaweedFS S3 at {stores[0].endpoint} to accept writes", within=60)
        yield stores


@contextlib.contextmanager
def docker_registry(root: Path, store: SeaweedFS) -> Iterator[str]:
    """docker-registry 2.8 on ``store``'s bucket (its s3 driver: path-style once
    ``regionendpoint`` is set; chunksize 8 MiB, Krill's part size)."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {level: warn}\n"
        "storage:\n"
        "  redirect: {disable: true}\n"
        "  s3:\n"
        f"    accesskey: {store.credentials.access_key}\n"
        f"    secretkey: {store.credentials.secret_key}\n"
        f"    region: {store.region}\n"
        f"    regionendpoint: {store.endpoint}\n"
        f"    bucket: {store.bucket}\n"
        "    secure: false\n"
        "    v4auth: true\n"
        f"    chunksize: {8 << 20}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    log = root / "registry.log"
    # The store is plain http; an AWS_CA_BUNDLE in the environment makes the AWS SDK of
    # docker-registry 2.8 panic at start ("unable to load custom CA bundle").
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    with process(["docker-registry", "serve", str(config)], log, env=env) as proc:
        wait_http(f"http://127.0.0.1:{port}/v2/", proc, name="docker-registry", log_path=log)
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def krill_origin(root: Path, store: SeaweedFS) -> Iterator[str]:
    port = free_port()
    storage = f"s3://{store.bucket}/krill?endpoint={store.endpoint}&region={store.region}"
    cmd = [sys.executable, "-m", "krill.cli", "origin", "--listen", f"127.0.0.1:{port}"]
    cmd += ["--data", str(root / "data"), "--storage", storage, "--log-level", "warning"]
    env = dict(os.environ)
    env["AWS_ACCESS_KEY_ID"] = store.credentials.access_key
    env["AWS_SECRET_ACCESS_KEY"] = store.credentials.secret_key
    root.mkdir(parents=True, exist_ok=True)
    log = root / "origin.log"
    with process(cmd, log, env=env) as proc:
        wait_http(f"http://127.0.0.1:{port}/v2/", proc, name="krill origin", log_path=log)
        yield f"http://127.0.0.1:{port}"


async def local_copy_back(path: Path, within: float = 120.0) -> None:
    """Wait until the origin's copy from the bucket is in place (at once, since the
    response ends after it: a check that the cold GET filled the cache)."""
    deadline = time.monotonic() + within
    while not path.exists():  # noqa: ASYNC240 - a stat, every 0.1 s
        if time.monotonic() > deadline:
            raise RuntimeError(f"the origin did not copy {path.name} back from the bucket")
        await asyncio.sleep(0.1)


async def bench(args: argparse.Namespace, workdir: Path, stores: list[SeaweedFS]) -> int:
    size = args.size_mib << 20
    blob = workdir / "blob.bin"
    digest = write_random_blob(blob, size)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
    load_before = os.getloadavg()
    krill_store, registry_store = stores
    with (
        docker_registry(workdir / "registry", registry_store) as registry,
        krill_origin(workdir / "origin", krill_store) as origin,
    ):
        servers = {"docker-registry": registry, "krill-origin": origin}
        put_rate = {}
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for name, base in servers.items():
                started = time.perf_counter()
                await push(session, base, blob, digest)
                put_rate[name] = size / (time.perf_counter() - started) / 1e6
        blob.unlink()
        urls = {name: f"{base}/v2/{REPO}/blobs/{digest}" for name, base in servers.items()}
        local = workdir / "origin/data/blobs/sha256" / digest[7:9] / digest[7:]
        rates: dict[str, list[float]] = {"registry": [], "cold": [], "warm": []}
        for _ in range(args.rounds):
            rates["registry"].append(
                await one_round(urls["docker-registry"], size, args.requests, 1)
            )
            cold = []
            for _ in range(args.requests):
                local.unlink(missing_ok=True)
                cold.append(await one_round(urls["krill-origin"], size, 1, 1))
                await local_copy_back(local)
            rates["cold"].append(statistics.median(cold))
            rates["warm"].append(await one_round(urls["krill-origin"], size, args.requests, 1))
    load_after = os.getloadavg()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(
        f"blob {args.size_mib} MiB on one SeaweedFS, {args.requests} GETs (one at a time) "
        f"per server per round, {args.rounds} rounds (median shown)"
    )
    print(
        f"load average {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} "
        f"at the start, {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f} at the end"
    )
    for name, rate in put_rate.items():
        print(f"PUT  {name:32s} {rate:8.0f} MB/s")
    put_ratio = put_rate["krill-origin"] / put_rate["docker-registry"]
    print(f"PUT  ratio krill/docker-registry: {put_ratio:.2f}x")
    labels = {
        "registry": "docker-registry (from S3)",
        "cold": "krill-origin cold (from S3)",
        "warm": "krill-origin warm (local copy)",
    }
    for name, values in rates.items():
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"GET  {labels[name]:32s} {medians[name]:8.0f} MB/s   (rounds: {rounds})")
    for name in ("cold", "warm"):
        print(
            f"GET  ratio krill {name}/docker-registry: {medians[name] / medians['registry']:.2f}x"
        )
    return 0


def run(args: argparse.Namespace, workdir: Path) -> int:
    with seaweedfs_server(workdir / "seaweedfs", [KRILL_BUCKET, REGISTRY_BUCKET]) as stores:
        return asyncio.run(bench(args, workdir, stores))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return run(args, args.workdir)
    with tempfile.TemporaryDirectory(prefix="krill-bench-s3-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
