"""What the serving benchmarks share: the servers they start, a random blob, the
cheapest HTTP client, metrics, and the work directory.

A general HTTP client spends more CPU per byte than the servers under test,
so it would measure itself; ``timed_get`` receives into one reused buffer,
counts the body and drops it, and notes when the first body byte arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from krill.processes import logged_process as process
from krill.processes import wait_http


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_random_blob(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; return their digest."""
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


class _DiscardingGet(asyncio.BufferedProtocol):
    """One HTTP/1.1 GET whose body is counted and dropped."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buffer = bytearray(4 << 20)
        self.head = b""
        self.body_left: int | None = None
        self.received = 0
        self.first_byte_at: float | None = None
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
            self.body_left = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            nbytes = len(rest)
        if nbytes and self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
        self.received += nbytes
        self.body_left -= nbytes
        if self.body_left <= 0 and not self.done.done():
            self.done.set_result(self.received)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed after {self.received} bytes"))


async def timed_get(url: str) -> tuple[int, float, float]:
    """(body bytes, seconds to first body byte, seconds to the end) for one GET."""
    parts = urlsplit(url)
    request = (
        f"GET {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\nConnection: close\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    _, protocol = await loop.create_connection(
        lambda: _DiscardingGet(request), parts.hostname or "localhost", parts.port or 80
    )
    size = await protocol.done
    first = (protocol.first_byte_at or time.perf_counter()) - started
    return size, first, time.perf_counter() - started


async def one_round(url: str, size: int, requests: int, concurrency: int) -> float:
    """MB/s (10^6 bytes/s) for ``requests`` GETs of a blob, ``concurrency`` at a time."""
    limit = asyncio.Semaphore(concurrency)

    async def limited() -> int:
        async with limit:
            return (await timed_get(url))[0]

    start = time.perf_counter()
    sizes = await asyncio.gather(*(limited() for _ in range(requests)))
    elapsed = time.perf_counter() - start
    if any(s != size for s in sizes):
        raise RuntimeError(f"short read from {url}: {sizes}")
    return requests * size / elapsed / 1e6


def read_metrics(base_url: str) -> dict[str, float]:
    """``{base_url}/metrics`` as {'name{label="v",...}': value}, by prometheus_client's parser."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


@contextlib.contextmanager
def docker_registry(root: Path, *, packaged: bool = False) -> Iterator[tuple[str, int]]:
    """docker-registry on loopback with filesystem storage: (base URL, pid).

    ``packaged``: as its packaged config runs it (blob descriptors cached in memory),
    without its access log, since Krill's services run at warning level and log no
    request lines; bench-load's many small requests would otherwise time the log.
    """
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    log_setting = "{level: warn, accesslog: {disabled: true}}" if packaged else "{level: warn}"
    cache = ", cache: {blobdescriptor: inmemory}" if packaged else ""
    config.write_text(
        f"version: 0.1\nlog: {log_setting}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}{cache}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    log = root / "registry.log"
    with process(["docker-registry", "serve", str(config)], log) as proc:
        wait_http(f"http://127.0.0.1:{port}/v2/", proc, name="docker-registry", log_path=log)
        yield f"http://127.0.0.1:{port}", proc.pid


@contextlib.contextmanager
def krill_origin(root: Path) -> Iterator[tuple[str, int]]:
    """``krill origin`` on loopback, data under ``root``, at warning level: (base URL, pid)."""
    port = free_port()
    cmd = [sys.executable, "-m", "krill.cli", "origin", "--listen", f"127.0.0.1:{port}"]
    cmd += ["--data", str(root / "data"), "--log-level", "warning"]
    root.mkdir(parents=True, exist_ok=True)
    log = root / "origin.log"
    with process(cmd, log) as proc:
        wait_http(f"http://127.0.0.1:{port}/v2/", proc, name="krill origin", log_path=log)
        yield f"http://127.0.0.1:{port}", proc.pid


Bench = Callable[[argparse.Namespace, Path], Coroutine[object, object, int]]


def run_bench(bench: Bench, args: argparse.Namespace, prefix: str) -> int:
    """Run ``bench`` in ``args.workdir`` (kept) or in a temporary directory (removed)."""
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(bench(args, args.workdir))
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        return asyncio.run(bench(args, Path(tmp)))
