"""Faults the tests in ``tests/test_faults_*.py`` inject into real processes.

* ``small_disk``: a tmpfs of a given size mounted where a service keeps its
  data, so "disk full" is the kernel's own ENOSPC at the byte it happens, not
  a mock; ``SmallDisk.resize`` frees space (a tmpfs grows in place on
  remount) and the mount is undone however the test ends. Needs root.
* ``GatedProxy``: a TCP relay in front of a server that stops forwarding a
  response after a given number of bytes (so a transfer is provably in the
  middle when the test kills something) and can hold new connections until
  the server behind it is back (so "the client retries once the origin
  returns" does not depend on how fast a restart is on a loaded machine).
* ``RestartableOrigin``: a ``krill origin`` process on a fixed port and data
  directory, to SIGKILL and start again; and the small helpers around it.
* ``SilentPeer`` and ``announce``: a peer that accepts connections and never
  sends, put into a swarm by announcing it to the tracker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest

from krill import bencode
from krill.blobstore import BlobStore
from krill.endpoints import METAINFO
from krill.metainfo import info_hash
from tests.agent_cluster import ServingThread
from tests.components import free_port, krill_process

__all__ = [
    "GatedProxy",
    "RestartableOrigin",
    "SilentPeer",
    "SmallDisk",
    "announce",
    "blob_infohash",
    "gated_proxy",
    "get_body",
    "incoming_files",
    "push_blob",
    "sha256_digest",
    "silent_peer",
    "small_disk",
    "stored_blobs",
]

RELAY_CHUNK = 64 * 1024


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class SmallDisk:
    """A mounted tmpfs; ``resize`` changes its size in place (its files stay)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def resize(self, size: int) -> None:
        _run("mount", "-o", f"remount,size={size}", str(self.path))

    def free(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize


@contextlib.contextmanager
def small_disk(path: Path, size: int) -> Iterator[SmallDisk]:
    """A ``size``-byte tmpfs mounted at ``path`` for the block; unmounted at the end.

    A process still holding files there (one the test could not stop) makes a
    plain umount fail; the lazy one detaches the mount anyway, so no test run
    leaves a mount behind.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "krill-test", str(path))
    try:
        yield SmallDisk(path)
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            _run("umount", "-l", str(path))


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")


class GatedProxy:
    """Relays 127.0.0.1:``port`` to an upstream port, with a gate on what comes back.

    State is changed on the relay's event loop only (``_call``); the test thread
    reads the counters, which are plain ints and bools.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, upstream_port: int) -> None:
        self._loop = loop
        self._upstream_port = upstream_port
        self.port = free_port()
        self.forwarded = 0  # response bytes relayed to clients, all connections
        self.waiting_at_gate = False  # a response is stopped at the byte limit
        self.held = 0  # connections waiting to be let through to the upstream
        self.requests = bytearray()  # every byte clients sent upstream
        self._limit: int | None = None
        self._gate = asyncio.Event()
        self._through = asyncio.Event()
        self._through.set()
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for relay in self._relays:
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)

    def stop_responses_after(self, limit: int) -> None:
        """Relay at most ``limit`` more response bytes, then wait for ``open_gate``."""

        def close() -> None:
            self._limit = self.forwarded + limit
            self._gate.clear()

        self._call(close)

    def open_gate(self) -> None:
        def open_() -> None:
            self._limit = None
            self._gate.set()

        self._call(open_)

    def hold_connections(self) -> None:
        """New connections are accepted but not relayed until ``let_connections_through``."""
        self._call(self._through.clear)

    def let_connections_through(self) -> None:
        self._call(self._through.set)

    def _call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the relay's loop and return once it has run."""

        async def call() -> None:
            fn()

        asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        try:
            await self._relay_through(client_r, client_w)
        finally:
            self._relays.discard(task)
            client_w.close()

    async def _relay_through(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        self.held += 1
        try:
            await self._through.wait()
        finally:
            self.held -= 1
        try:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        except OSError:
            return  # the upstream is down: the client sees its connection close
        try:
            await asyncio.gather(
                self._requests(client_r, upstream_w),
                self._responses(upstream_r, client_w),
            )
        except (OSError, asyncio.IncompleteReadError):
            pass  # one side went away; closing both is all that is left to do
        finally:
            upstream_w.close()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(RELAY_CHUNK):
                self.requests += data
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def _responses(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                if self._limit is not None and self.forwarded >= self._limit:
                    self.waiting_at_gate = True
                    await self._gate.wait()
                    self.waiting_at_gate = False
                room = RELAY_CHUNK if self._limit is None else self._limit - self.forwarded
                data = await reader.read(max(1, min(RELAY_CHUNK, room)))
                if not data:
                    break
                writer.write(data)
                await writer.drain()
                self.forwarded += len(data)
        finally:
            writer.close()


@contextlib.contextmanager
def gated_proxy(upstream_port: int) -> Iterator[GatedProxy]:
    """A ``GatedProxy`` serving from its own event loop thread for the block."""
    thread = ServingThread()
    proxy = GatedProxy(thread.loop, upstream_port)
    try:
        thread.call(proxy.start())
        yield proxy
    finally:
        thread.call(proxy.stop())
        thread.close()


@dataclass
class RestartableOrigin:
    """A ``krill origin`` on a fixed port and data directory, started again after a kill."""

    port: int
    data: Path
    logs: Path
    extra: tuple[str, ...] = ()  # more ``krill origin`` arguments (--tracker URL)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextlib.contextmanager
    def running(self, name: str) -> Iterator[subprocess.Popen[bytes]]:
        args = ["origin", "--listen", f"127.0.0.1:{self.port}", "--data", str(self.data)]
        args += self.extra
        with krill_process(args, self.logs / f"{name}.log", f"{self.url}/v2/") as proc:
            self.process = proc
            yield proc

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


def push_blob(base: str, data: bytes, repository: str = "team/app") -> str:
    """Monolithic upload of ``data``; its digest."""
    digest = sha256_digest(data)
    url = f"{base}/v2/{repository}/blobs/uploads/?digest={digest}"
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST")) as r:
        assert r.status == 201
    return digest


def get_body(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=300) as response:
        return bytes(response.read())


def stored_blobs(store_root: Path) -> set[str]:
    """The digests committed in the blob store at ``store_root``."""
    return {str(d) for d in BlobStore(store_root).digests()}


def incoming_files(store_root: Path) -> list[Path]:
    """Temp files of writes under way (or interrupted) in the store at ``store_root``."""
    incoming = store_root / "incoming"
    return list(incoming.iterdir()) if incoming.exists() else []


def blob_infohash(origin: str, digest: str) -> bytes:
    """The infohash of a blob's swarm, from the origin's metainfo for it."""
    with urllib.request.urlopen(METAINFO.url(origin, digest), timeout=30) as response:
        return bytes.fromhex(info_hash(response.read()))


def announce(
    tracker: str, infohash: bytes, port: int, *, peer_id: bytes, left: int = 1
) -> dict[bytes, object]:
    """One announce of a peer the test plays (``left=0``: a seeder); the decoded answer."""
    query = (
        f"info_hash={quote_from_bytes(infohash)}&peer_id={quote_from_bytes(peer_id)}"
        f"&port={port}&uploaded=0&downloaded=0&left={left}&compact=1&numwant=50"
    )
    with urllib.request.urlopen(f"{tracker}/announce?{query}", timeout=30) as response:
        decoded = bencode.decode(response.read())
    assert isinstance(decoded, dict)
    return decoded


class SilentPeer:
    """A "peer" that accepts connections and never sends a byte (nor reads one)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.accepted = 0
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the listener closed
            while True:
                connection, _ = self._listener.accept()
                self._connections.append(connection)
                self.accepted += 1

    def close(self) -> None:
        # shutdown() wakes the accept() blocked in the thread; on Linux close() from
        # another thread does not, and the join below waited out its 10 s every time.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for connection in self._connections:
            connection.close()
        self._thread.join(10)


@contextlib.contextmanager
def silent_peer() -> Iterator[SilentPeer]:
    peer = SilentPeer()
    try:
        yield peer
    finally:
        peer.close()
