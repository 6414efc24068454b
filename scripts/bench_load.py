"""Many small concurrent requests: a Krill origin vs. docker-registry, and the agent's cache.

Run through ``scripts/bench-load`` (which installs what is needed). Pulls are
mostly small requests before any layer moves: containerd resolves a tag
(manifest HEAD and GET), asks for each blob's size (HEAD), and tools list
tags. This measures those at a few concurrency levels, in the same run:

* ``krill origin`` and ``docker-registry`` (the CNCF distribution registry),
  both real processes on loopback holding the same image under ``--tags``
  tags, answer a mix of manifest GET and HEAD by tag, blob HEAD and tag list;
  rounds alternate between the two servers;
* a ``krill agent`` (with its origin and tracker, as ``krill up`` starts
  them) answers manifest GET/HEAD by digest and blob HEAD/GET for blobs it
  has cached;
* ``krill tracker`` and a bare aiohttp handler answer compact announces
  (``scripts/bench_load_tracker.py``): issue 20's goal is >= 0.7x.

After the levels, ``--herd`` clients (200) GET one uncached blob through the
agent at once: errors (the goal is none) and when their last bytes arrived.
Last, ``--pushes`` clients (100) each push a blob and pull it back, all at
once, against the origin and docker-registry (``scripts/bench_load_push.py``).

For each server and level: requests per second (median round), p50 and p99
latency over every request of the level, and the server's CPU seconds per
1,000 requests (from /proc, so a loaded machine inflates latency but not
CPU). Then each server's peak resident memory, and the ratios origin /
docker-registry. The client keeps ``concurrency`` HTTP/1.1 keep-alive
connections, each sending its next request when the last answer is read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import io
import itertools
import json
import statistics
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

from bench_load_push import run_pushes
from bench_load_tracker import announce_paths, trackers
from benchlib import (
    cpu_seconds,
    docker_registry,
    free_port,
    krill_origin,
    run_bench,
    timed_get,
    write_random_blob,
)

from krill.processes import logged_process as process
from krill.processes import wait_http
from krill.up import Addresses, service_commands

REPO = "bench/load"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,16,64", help="concurrency levels, comma-separated")
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per level")
    parser.add_argument("--tags", type=int, default=50, help="tags in the tag list")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    parser.add_argument("--no-agent", action="store_true", help="skip the agent's figures")
    parser.add_argument(
        "--no-tracker", action="store_true", help="skip announces (tracker vs bare aiohttp)"
    )
    parser.add_argument(
        "--herd", type=int, default=200, help="concurrent pulls of one uncached blob (agent)"
    )
    parser.add_argument("--herd-size-mib", type=int, default=16, help="that blob's size")
    parser.add_argument(
        "--pushes", type=int, default=100, help="concurrent push+pull clients per server"
    )
    parser.add_argument("--push-size-kib", type=int, default=1024, help="each pushed blob")
    parser.add_argument("--only-pushes", action="store_true", help="skip everything else")
    return parser.parse_args(argv)


# ---- the image ------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


def layer(seed: int, size: int) -> Blob:
    """A real tar+gzip layer of one file of ``size`` pseudo-random bytes."""
    content = bytes((i * 7919 + seed) % 251 for i in range(size))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(f"data/{seed}.bin")
        info.size, info.mtime = len(content), 1_700_000_000
        tar.addfile(info, io.BytesIO(content))
    return Blob(gzip.compress(raw.getvalue(), mtime=0), OCI_LAYER)


@dataclass(frozen=True)
class Image:
    config: Blob
    layers: list[Blob]
    manifest: Blob

    def blobs(self) -> list[Blob]:
        return [self.config, *self.layers]


def build_image() -> Image:
    layers = [layer(seed, 64 * 1024) for seed in range(3)]
    config = Blob(
        json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode(),
        OCI_CONFIG,
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [b.descriptor() for b in layers],
    }
    return Image(config, layers, Blob(json.dumps(manifest).encode(), OCI_MANIFEST))


def push_image(base: str, image: Image, tags: int) -> None:
    """Blobs (POST, then PUT with the body), then the manifest under tags v0..v{tags-1}."""
    for blob in image.blobs():
        push_blob(base, blob.digest, blob.data)
    for n in range(tags):
        url = f"{base}/v2/{REPO}/manifests/v{n}"
        send("PUT", url, image.manifest.data, {"Content-Type": OCI_MANIFEST})


def push_blob(base: str, digest: str, data: bytes) -> None:
    """A monolithic upload: POST, then PUT with the body."""
    location = send("POST", f"{base}/v2/{REPO}/blobs/uploads/", b"")["Location"]
    location = base + location if location.startswith("/") else location
    sep = "&" if "?" in location else "?"
    # A form Content-Type (urllib's default) would have Go's registry read the body
    # as form fields while looking up ?digest=, leaving it nothing to hash.
    binary = {"Content-Type": "application/octet-stream"}
    send("PUT", f"{location}{sep}digest={digest}", data, binary)


def send(method: str, url: str, data: bytes, headers: dict[str, str] | None = None) -> Message:
    """One request during set-up; its headers. A refusal raises with the server's reason."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.headers
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"{method} {url}: {err.code} {err.read()[:500]!r}") from None


# ---- the client -----------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    accept: str | None = None


def origin_mix(image: Image) -> list[Call]:
    """What a pull's resolution and a tag listing ask a registry."""
    blob = image.layers[0].digest
    return [
        Call("HEAD", f"/v2/{REPO}/manifests/v0", OCI_MANIFEST),
        Call("GET", f"/v2/{REPO}/manifests/v0", OCI_MANIFEST),
        Call("HEAD", f"/v2/{REPO}/blobs/{blob}"),
        Call("GET", f"/v2/{REPO}/tags/list"),
    ]


def agent_mix(image: Image) -> list[Call]:
    """What containerd asks a node for an image it has already pulled."""
    manifest, blob = image.manifest.digest, image.layers[0].digest
    return [
        Call("HEAD", f"/v2/{REPO}/manifests/{manifest}", OCI_MANIFEST),
        Call("GET", f"/v2/{REPO}/manifests/{manifest}", OCI_MANIFEST),
        Call("HEAD", f"/v2/{REPO}/blobs/{blob}"),
        Call("GET", f"/v2/{REPO}/blobs/{blob}"),
    ]


def encode(call: Call, host: str) -> bytes:
    accept = f"Accept: {call.accept}\r\n" if call.accept else ""
    return f"{call.method} {call.path} HTTP/1.1\r\nHost: {host}\r\n{accept}\r\n".encode()


async def read_response(reader: asyncio.StreamReader, method: str) -> int:
    """Read one response (its body counted and dropped); its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in lines[1:] if line)
    }
    if method == "HEAD" or status in (204, 304):
        return status
    if headers.get(b"transfer-encoding") == b"chunked":
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    else:
        await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status


@dataclass
class Round:
    seconds: float
    latencies: list[float]
    cpu: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds


async def one_connection(
    base: str, calls: Iterator[Call], left: list[int], latencies: list[float]
) -> None:
    """Send requests on one keep-alive connection until the round's budget is spent."""
    parts = urlsplit(base)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        while left[0] > 0:
            left[0] -= 1
            call = next(calls)
            started = time.perf_counter()
            writer.write(encode(call, parts.netloc))
            status = await read_response(reader, call.method)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"{call.method} {base}{call.path} answered {status}")
    finally:
        writer.close()


async def one_round(base: str, pid: int, mix: list[Call], requests: int, level: int) -> Round:
    calls = itertools.cycle(mix)
    left = [requests]  # shared by the round's connections: requests not yet sent
    latencies: list[float] = []
    before = cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(one_connection(base, calls, left, latencies) for _ in range(level)))
    elapsed = time.perf_counter() - started
    return Round(elapsed, latencies, cpu_seconds(pid) - before)


# ---- processes ------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    base: str
    pid: int
    mix: list[Call]
    rounds: dict[int, list[Round]] = field(default_factory=dict)

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


@contextlib.contextmanager
def krill_cluster(work: Path) -> Iterator[tuple[str, str, int]]:
    """origin, tracker and agent as ``krill up`` starts them: (origin, registry, agent pid)."""
    work.mkdir(parents=True, exist_ok=True)
    names = ("origin", "tracker", "agent", "registry")
    addresses = Addresses(**{n: f"127.0.0.1:{free_port()}" for n in names}, data=str(work))
    pids = {}
    with contextlib.ExitStack() as stack:
        for name, argv, health in service_commands(addresses, work):
            command = [sys.executable, "-m", "krill.cli", *argv, "--log-level", "warning"]
            proc = stack.enter_context(process(command, work / f"{name}.log"))
            wait_http(health, proc, timeout=60, name=name)
            pids[name] = proc.pid
        yield f"http://{addresses.origin}", f"http://{addresses.registry}", pids["agent"]


def warm_agent(registry: str, image: Image) -> None:
    """Pull the manifest and every blob through the agent, so all are in its cache."""
    for call in agent_mix(image):
        request = urllib.request.Request(
            registry + call.path, headers={"Accept": call.accept or "*/*"}
        )
        urllib.request.urlopen(request, timeout=120).read()
    for blob in image.blobs():
        urllib.request.urlopen(f"{registry}/v2/{REPO}/blobs/{blob.digest}", timeout=120).read()


# ---- the benchmark --------------------------------------------------------------------


async def measure(servers: list[Server], levels: list[int], requests: int, rounds: int) -> None:
    for server in servers:  # connections, caches and code paths warm before timing
        await one_round(server.base, server.pid, server.mix, min(requests, 500), 4)
    for level in levels:
        for _ in range(rounds):
            for server in servers:
                result = await one_round(server.base, server.pid, server.mix, requests, level)
                server.rounds.setdefault(level, []).append(result)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(servers: list[Server], levels: list[int]) -> str:
    lines = []
    for level in levels:
        lines.append(f"concurrency {level}:")
        rates = {}
        for server in servers:
            rounds = server.rounds[level]
            latencies = [x for r in rounds for x in r.latencies]
            rates[server.name] = statistics.median(r.rate for r in rounds)
            cpu = sum(r.cpu for r in rounds) / len(latencies) * 1000
            lines.append(
                f"  {server.name:16s} {rates[server.name]:7.0f} req/s   "
                f"p50 {percentile(latencies, 0.5) * 1000:6.2f} ms   "
                f"p99 {percentile(latencies, 0.99) * 1000:6.2f} ms   "
                f"server CPU {cpu:.3f} s per 1000 req   (rounds: "
                + ", ".join(f"{r.rate:.0f}" for r in rounds)
                + ")"
            )
        if "krill-origin" in rates and "docker-registry" in rates:
            ratio = rates["krill-origin"] / rates["docker-registry"]
            lines.append(f"  ratio origin/docker-registry: {ratio:.2f}x req/s")
        if "krill-tracker" in rates and "bare-aiohttp" in rates:
            ratio = rates["krill-tracker"] / rates["bare-aiohttp"]
            lines.append(f"  ratio tracker/bare aiohttp announce: {ratio:.2f}x (goal >= 0.7x)")
    lines.append("peak RSS: " + ", ".join(f"{s.name} {s.peak_rss_mib():.0f} MiB" for s in servers))
    return "\n".join(lines)


async def bench(args: argparse.Namespace, work: Path) -> int:
    levels = [int(x) for x in args.levels.split(",")]
    image = build_image()
    with contextlib.ExitStack() as stack:
        registry, registry_pid = stack.enter_context(
            docker_registry(work / "registry", packaged=True)
        )
        origin, origin_pid = stack.enter_context(krill_origin(work / "origin"))
        servers = [
            Server("docker-registry", registry, registry_pid, origin_mix(image)),
            Server("krill-origin", origin, origin_pid, origin_mix(image)),
        ]
        if args.only_pushes:
            await report_pushes(servers[:2], args)
            return 0
        herd_line = ""
        if not args.no_agent:
            agent_origin, agent_registry, agent_pid = stack.enter_context(
                krill_cluster(work / "cluster")
            )
            push_image(agent_origin, image, 1)
            warm_agent(agent_registry, image)
            servers.append(Server("krill-agent", agent_registry, agent_pid, agent_mix(image)))
            herd_line = await herd(agent_origin, agent_registry, args, work)
        if not args.no_tracker:
            (tracker, tracker_pid), (bare, bare_pid) = stack.enter_context(
                trackers(work / "trackers", origin)
            )
            mix = [Call("GET", path) for path in announce_paths()]
            servers.append(Server("krill-tracker", tracker, tracker_pid, mix))
            servers.append(Server("bare-aiohttp", bare, bare_pid, mix))
        for server in servers[:2]:
            push_image(server.base, image, args.tags)
        await measure(servers, levels, args.requests, args.rounds)
        print(
            f"{args.requests} requests per round, {args.rounds} rounds per level, "
            f"{args.tags} tags; origin and docker-registry: manifest HEAD+GET by tag, "
            "blob HEAD, tag list; agent: manifest HEAD+GET by digest, cached 64 KiB blob "
            "HEAD+GET; tracker and bare aiohttp: compact announces of 256 peers in 8 swarms"
        )
        print(report(servers, levels))
        if herd_line:
            print(herd_line)
        await report_pushes(servers[:2], args)
    return 0


async def report_pushes(servers: list[Server], args: argparse.Namespace) -> None:
    """``--pushes`` clients push and pull their own blob at once, per server in turn."""
    if args.pushes <= 0:
        return
    print(f"{args.pushes} concurrent clients, each pushing a {args.push_size_kib} KiB blob:")
    for server in servers:
        run = await run_pushes(server.name, server.base, args.pushes, args.push_size_kib << 10)
        print(run.report() + f"; peak RSS {server.peak_rss_mib():.0f} MiB")


async def herd(origin: str, registry: str, args: argparse.Namespace, work: Path) -> str:
    """``--herd`` clients GET one uncached blob through the agent at once; a one-line report.

    The agent fetches it once (single flight) and streams it to every client as it
    arrives; each client checks it got every byte.
    """
    size = args.herd_size_mib << 20
    path = work / "herd-blob"
    digest = write_random_blob(path, size)
    push_blob(origin, digest, path.read_bytes())
    path.unlink()
    url = f"{registry}/v2/{REPO}/blobs/{digest}"
    started = time.perf_counter()
    results = await asyncio.gather(
        *(timed_get(url) for _ in range(args.herd)), return_exceptions=True
    )
    wall = time.perf_counter() - started
    done = [r for r in results if not isinstance(r, BaseException) and r[0] == size]
    errors = len(results) - len(done)
    ends = [r[2] for r in done]
    spread = (
        f"last byte p50 {percentile(ends, 0.5):.2f} s, p99 {percentile(ends, 0.99):.2f} s"
        if ends
        else "no client finished"
    )
    return (
        f"{args.herd} concurrent GETs of one uncached {args.herd_size_mib} MiB blob through "
        f"the agent: {errors} errors, all done in {wall:.2f} s ({spread})"
    )


def main(argv: list[str] | None = None) -> int:
    return run_bench(bench, parse_args(argv), "krill-bench-load-")


if __name__ == "__main__":
    sys.exit(main())
