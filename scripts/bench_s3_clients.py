"""S3 client libraries side by side on one SeaweedFS: Krill's own, obstore, aiobotocore.

Run through ``scripts/bench-s3 --clients`` (which pip-installs obstore and
aiobotocore into the venv if missing: bench-only, not Krill dependencies).
Issue 17 asked for the origin's S3 client to be chosen by measurement. Each
client does the origin's three jobs, each in a fresh child process (so its
peak RSS is that job's), alternating clients, for ``--rounds`` rounds:

* **PUT** a ``--size-mib`` file as a multipart upload, 8 MiB parts, 4 at
  once (Krill's settings; obstore and aiobotocore set the same), hashing the
  whole with sha256 on the way as the origin must (verify before complete);
* **GET** the object whole, streamed in 1 MiB chunks and dropped;
* **RANGE**: ``--ranges`` GETs of 4 MiB at fixed pseudo-random offsets.

Prints MB/s (median round), CPU seconds of the client process (user+sys,
median) and peak RSS above the process's RSS after its imports, and the
ratios to Krill's client, with the load average: a shared 2-core box.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench_s3 import seaweedfs_server
from benchlib import write_random_blob
from yarl import URL

from krill.blobbackend import file_chunks
from krill.digests import Digest
from krill.s3backend import S3Backend
from krill.s3client import S3Location
from krill.s3sign import Credentials

CLIENTS = ("krill", "obstore", "aiobotocore")
JOBS = ("put", "get", "range")
BUCKET = "clients-bench"
PART = 8 << 20
IN_FLIGHT = 4
CHUNK = 1 << 20
RANGE = 4 << 20


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def ranges(size: int, count: int) -> list[int]:
    rng = random.Random(17)
    return [rng.randrange(0, max(1, size - RANGE)) for _ in range(count)]


async def hashed(path: Path, hasher: Any) -> AsyncIterator[bytes]:
    async for chunk in file_chunks(path, PART):
        await asyncio.to_thread(hasher.update, chunk)
        yield chunk


async def run_krill(job: str, env: dict[str, Any]) -> int:
    location = S3Location(URL(env["endpoint"]), BUCKET, "krill", env["region"])
    backend = S3Backend(location, Credentials(env["access"], env["secret"]))
    backend.parts_in_flight = IN_FLIGHT
    digest = Digest.parse(env["digest"])
    moved = 0
    try:
        if job == "put":
            await backend.delete(digest)
            await backend.put_file(digest, Path(env["blob"]))  # hashes the whole, verifies
            moved = env["size"]
        elif job == "get":
            async with backend.open(digest) as reader:
                async for chunk in reader.chunks:
                    moved += len(chunk)
        else:
            for start in ranges(env["size"], env["ranges"]):
                async with backend.open(digest, start, RANGE) as reader:
                    async for chunk in reader.chunks:
                        moved += len(chunk)
    finally:
        await backend.close()
    return moved


async def run_obstore(job: str, env: dict[str, Any]) -> int:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=env["endpoint"],
        region=env["region"],
        access_key_id=env["access"],
        secret_access_key=env["secret"],
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )
    key = "obstore/" + env["digest"]
    moved = 0
    if job == "put":
        hasher = hashlib.sha256()
        await obstore.put_async(
            store,
            key,
            hashed(Path(env["blob"]), hasher),
            use_multipart=True,
            chunk_size=PART,
            max_concurrency=IN_FLIGHT,
        )
        assert "sha256:" + hasher.hexdigest() == env["digest"]
        moved = env["size"]
    elif job == "get":
        result = await obstore.get_async(store, key)
        async for chunk in result.stream(min_chunk_size=CHUNK):
            moved += len(memoryview(chunk))
    else:
        for start in ranges(env["size"], env["ranges"]):
            result = await obstore.get_async(store, key, options={"range": (start, start + RANGE)})
            async for chunk in result.stream(min_chunk_size=CHUNK):
                moved += len(memoryview(chunk))
    return moved


async def run_aiobotocore(job: str, env: dict[str, Any]) -> int:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    session = get_session()
    config = AioConfig(s3={"addressing_style": "path"}, max_pool_connections=IN_FLIGHT * 2)
    key = "aiobotocore/" + env["digest"]
    moved = 0
    async with session.create_client(
        "s3",
        endpoint_url=env["endpoint"],
        region_name=env["region"],
        aws_access_key_id=env["access"],
        aws_secret_access_key=env["secret"],
        config=config,
    ) as s3:
        if job == "put":
            hasher = hashlib.sha256()
            upload = await s3.create_multipart_upload(Bucket=BUCKET, Key=key)
            uid = upload["UploadId"]
            parts: dict[int, str] = {}
            sending: set[asyncio.Task[None]] = set()

            async def send(number: int, data: bytes) -> None:
                resp = await s3.upload_part(
                    Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=number, Body=data
                )
                parts[number] = resp["ETag"]

            number = 0
            async for chunk in hashed(Path(env["blob"]), hasher):
                number += 1
                if len(sending) >= IN_FLIGHT:
                    done, sending = await asyncio.wait(sending, return_when="FIRST_COMPLETED")
                    for task in done:
                        task.result()
                sending.add(asyncio.create_task(send(number, chunk)))
            await asyncio.gather(*sending)
            assert "sha256:" + hasher.hexdigest() == env["digest"]
            await s3.complete_multipart_upload(
                Bucket=BUCKET,
                Key=key,
                UploadId=uid,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": e} for n, e in sorted(parts.items())]
                },
            )
            moved = env["size"]
        else:
            spans = [None] if job == "get" else ranges(env["size"], env["ranges"])
            for start in spans:
                extra = {} if start is None else {"Range": f"bytes={start}-{start + RANGE - 1}"}
                resp = await s3.get_object(Bucket=BUCKET, Key=key, **extra)
                async with resp["Body"] as body:
                    while chunk := await body.read(CHUNK):
                        moved += len(chunk)
    return moved


RUNNERS = {"krill": run_krill, "obstore": run_obstore, "aiobotocore": run_aiobotocore}


def child(client: str, job: str, env: dict[str, Any]) -> None:
    """One job of one client; prints seconds, bytes, CPU seconds and peak RSS above start."""
    if client != "krill":
        __import__("obstore" if client == "obstore" else "aiobotocore.session")
    base = rss_kib()
    started_cpu = time.process_time()
    started = time.perf_counter()
    moved = asyncio.run(RUNNERS[client](job, env))
    seconds = time.perf_counter() - started
    cpu = time.process_time() - started_cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {"seconds": seconds, "bytes": moved, "cpu": cpu, "peak_mib": (peak - base) / 1024}
        )
    )


def run_child(client: str, job: str, env: dict[str, Any]) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", client, job, json.dumps(env)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(
            f"{client} {job} failed ({out.returncode}):\n{out.stdout[-500:]}{out.stderr[-3000:]}"
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--ranges", type=int, default=32, help="4 MiB ranged GETs per round")
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args(argv)


def bench(args: argparse.Namespace, workdir: Path) -> int:
    blob = workdir / "blob.bin"
    digest = write_random_blob(blob, args.size_mib << 20)
    load_before = os.getloadavg()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with seaweedfs_server(workdir / "seaweedfs", [BUCKET]) as (store,):
        env = {
            "endpoint": str(store.endpoint),
            "region": store.region,
            "access": store.credentials.access_key,
            "secret": store.credentials.secret_key,
            "digest": digest,
            "blob": str(blob),
            "size": args.size_mib << 20,
            "ranges": args.ranges,
        }
        for _ in range(args.rounds):
            for job in JOBS:
                for client in CLIENTS:
                    results.setdefault((client, job), []).append(run_child(client, job, env))
    load_after = os.getloadavg()
    print(
        f"{args.size_mib} MiB object, {args.ranges} x 4 MiB ranges, {args.rounds} rounds "
        f"(median shown), one SeaweedFS on loopback; 8 MiB parts, 4 at once"
    )
    print(
        f"load average {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} "
        f"at the start, {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f} at the end"
    )
    print(f"{'job':6s} {'client':12s} {'MB/s':>8s} {'ratio':>7s} {'CPU s':>7s} {'peak MiB':>9s}")
    for job in JOBS:
        medians = {}
        for client in CLIENTS:
            runs = results[(client, job)]
            rate = statistics.median(r["bytes"] / r["seconds"] / 1e6 for r in runs)
            cpu = statistics.median(r["cpu"] for r in runs)
            peak = max(r["peak_mib"] for r in runs)
            medians[client] = rate
            ratio = rate / medians["krill"]
            print(f"{job:6s} {client:12s} {rate:8.0f} {ratio:6.2f}x {cpu:7.2f} {peak:9.1f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2], json.loads(argv[3]))
        sys.stdout.flush()
        # obstore's Tokio runtime can abort the interpreter's teardown (SIGABRT) now and
        # then; the figures are out, so leave without one.
        os._exit(0)
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="krill-bench-s3-clients-") as tmp:
        return bench(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
