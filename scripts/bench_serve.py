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
import asyncio
import contextlib
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from yarl import URL

REPO = "bench/blob"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512, help="blob size in MiB")
    parser.add_argument("--requests", type=int, default=8, help="GETs per server per round")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel GETs")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per server")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_random_blob(path: Path, size: int) -> str:
    hasher = hashlib.sha256()
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, 8 << 20))
            f.write(chunk)
            hasher.update(chunk)
            remaining -= len(chunk)
    return "sha256:" + hasher.hexdigest()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (from /proc), load-independent."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def process(cmd: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def docker_registry(root: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    with process(["docker-registry", "serve", str(config)], root / "registry.log") as proc:
        yield f"http://127.0.0.1:{port}", proc.pid


@contextlib.contextmanager
def krill_origin(root: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    cmd = [sys.executable, "-m", "krill.cli", "origin", "--listen", f"127.0.0.1:{port}"]
    cmd += ["--data", str(root / "data"), "--log-level", "warning"]
    root.mkdir(parents=True, exist_ok=True)
    with process(cmd, root / "origin.log") as proc:
        yield f"http://127.0.0.1:{port}", proc.pid


async def wait_ready(session: aiohttp.ClientSession, base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{base}/v2/") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{base} did not come up")


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


class _DiscardingGet(asyncio.BufferedProtocol):
    """One HTTP/1.1 GET whose body is counted and dropped: the cheapest possible client.

    A general HTTP client spends more CPU per byte than either server, so it
    would measure itself; this one receives into one reused buffer.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buffer = bytearray(4 << 20)
        self.head = b""
        self.body_left: int | None = None
        self.received = 0
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        if self.body_left is None:
            self.head += bytes(self.buffer[:nbytes])
            if b"\r\n\r\n" not in self.head:
                return
            head, _, rest = self.head.partition(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            if status != b"200":
                self.done.set_exception(RuntimeError(f"GET answered {status.decode()}"))
                self.transport.close()
                return
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            self.body_left = length
            nbytes = len(rest)
        self.received += nbytes
        self.body_left -= nbytes
        if self.body_left <= 0 and not self.done.done():
            self.done.set_result(self.received)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"connection closed after {self.received}"))


async def fetch(url: str) -> int:
    """GET ``url`` on a fresh connection; return the body length."""
    parsed = URL(url)
    request = (
        f"GET {parsed.raw_path_qs} HTTP/1.1\r\nHost: {parsed.host}:{parsed.port}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: _DiscardingGet(request), parsed.host, parsed.port
    )
    return await protocol.done


async def one_round(url: str, size: int, requests: int, concurrency: int) -> float:
    """MB/s for ``requests`` GETs of the blob, ``concurrency`` at a time."""
    limit = asyncio.Semaphore(concurrency)

    async def limited() -> int:
        async with limit:
            return await fetch(url)

    start = time.perf_counter()
    sizes = await asyncio.gather(*(limited() for _ in range(requests)))
    elapsed = time.perf_counter() - start
    if any(s != size for s in sizes):
        raise RuntimeError(f"short read from {url}: {sizes}")
    return requests * size / elapsed / 1e6


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
            for base in servers.values():
                await wait_ready(session, base)
                await push(session, base, blob, digest)
            blob.unlink()
            urls = {name: f"{base}/v2/{REPO}/blobs/{digest}" for name, base in servers.items()}
            for url in urls.values():
                await fetch(url)  # warm the page cache
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
    print(f"ratio origin/docker-registry: {ratio:.2f}x")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(bench(args, args.workdir))
    with tempfile.TemporaryDirectory(prefix="krill-bench-serve-") as tmp:
        return asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
