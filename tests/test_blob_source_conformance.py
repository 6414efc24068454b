"""The promise every way the agent gets a blob must keep: nothing unverified is served.

Spegel's ``storetest`` model: one contract, run against every implementation
that can be built in-process here:

* ``origin``: ``OriginHttpSource``, the origin's registry API over HTTP;
* ``swarm``: ``SwarmSource`` over a real libtorrent ``SwarmEngine``, with a real
  seeding engine and tracker on loopback;
* ``delta``: ``DeltaRebuilder``, a layer rebuilt from a cached base and a delta.

Each is pointed at a server that sends, where the blob belongs, the blob
itself or a tampered copy (one byte flipped, cut in half, other bytes of the
same length). Whatever is sent, a source either publishes exactly the blob
or refuses, and then: the store holds nothing under the digest, its incoming
area holds none of its bytes, and a client streaming the transfer never received a whole
body (the last byte waits for the digest check).

What "the server" is differs per source. The origin's is its blob endpoint
(a cut connection is resumed with Range and cut again). The swarm's is the
seeder and the metainfo together: a peer's bytes get past libtorrent only if
they match the metainfo's piece hashes, so the lie that reaches the agent's
own check is a seeder and a metainfo describing other bytes under the blob's
name. The delta's is the delta blob the origin offers. (The upstream
``server`` in hosts.toml is containerd's to verify: the agent never fetches
from it.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from krill.agent.sources import OriginHttpSource, SourceUnavailable, Transfer, TransferFailed
from krill.agent.swarm_source import SwarmSource
from krill.blobstore import BlobStore
from krill.digests import Digest, sha256_file
from krill.endpoints import METAINFO
from krill.metainfo import make_metainfo
from krill.originclient import OriginClient
from krill.swarm import SwarmEngine, SwarmSettings
from tests.fixtures_agent import fake_origin, rebuild_with, versions_with_a_delta
from tests.swarm_helpers import running_tracker

REPO = "team/app"
BLOB_SIZE = 300 * 1024 + 7  # five 64 KiB pieces, the last one short


class Tamper(Enum):
    """What the server sends where the blob belongs."""

    NONE = "none"
    FLIPPED = "flipped"
    TRUNCATED = "truncated"
    REPLACED = "replaced"

    def apply(self, data: bytes) -> bytes:
        if self is Tamper.FLIPPED:
            middle = len(data) // 2
            return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        if self is Tamper.TRUNCATED:
            return data[: len(data) // 2]
        if self is Tamper.REPLACED:
            return os.urandom(len(data))
        return data


class Outcome(Enum):
    PUBLISHED = "published"
    REFUSED = "refused"


@dataclass(frozen=True)
class Attempt:
    """One source's try at one blob, and what a client streaming it received."""

    digest: Digest
    blob: bytes
    store: BlobStore
    outcome: Outcome
    received: bytes | None  # None: this source does not stream (the delta path)


Harness = Callable[[Path, Tamper, aiohttp.ClientSession], Awaitable[Attempt]]


# ---- the contract ---------------------------------------------------------------


@pytest.mark.parametrize("tamper", list(Tamper), ids=lambda t: t.value)
@pytest.mark.parametrize("source", ["origin", "swarm", "delta"])
async def test_nothing_unverified_is_published_or_served_whole(
    source: str, tamper: Tamper, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    attempt = await HARNESSES[source](tmp_path, tamper, http)
    expected = Outcome.PUBLISHED if tamper is Tamper.NONE else Outcome.REFUSED
    assert attempt.outcome is expected
    store, digest = attempt.store, attempt.digest
    if attempt.outcome is Outcome.PUBLISHED:
        assert sha256_file(str(store.path(digest))) == digest
        assert attempt.received in (None, attempt.blob)
    else:
        assert not store.has(digest), "a blob failing its check was published"
        assert attempt.received is None or len(attempt.received) < len(attempt.blob)
    assert leftovers(store) == [], "the incoming area keeps a failed transfer's bytes"


def leftovers(store: BlobStore) -> list[Path]:
    """Files left in the store's incoming area (an empty directory holds no bytes)."""
    return sorted(p for p in (store.root / "incoming").rglob("*") if not p.is_dir())


async def stream(transfer: Transfer) -> tuple[bytes, Outcome]:
    """Read the transfer as the registry endpoint does: verified bytes, in order."""
    received = bytearray()
    try:
        await transfer.wait_available(0)  # the fetcher hands out a transfer only after this
        fd = await open_data(transfer)
        try:
            while len(received) < transfer.size:
                available = await transfer.wait_available(len(received))
                chunk = await transfer.read(fd, len(received), available)
                if not chunk:
                    raise TransferFailed("the partial file is shorter than reported")
                received += chunk
        finally:
            os.close(fd)
        await transfer.wait_done()
    except TransferFailed:
        return bytes(received), Outcome.REFUSED
    return bytes(received), Outcome.PUBLISHED


async def open_data(transfer: Transfer) -> int:
    """The partial file, or the published one if the transfer ended first (as serving does)."""
    try:
        return os.open(transfer.partial_path, os.O_RDONLY)
    except FileNotFoundError:
        path = await transfer.wait_done()  # raises TransferFailed if it failed
        return os.open(path, os.O_RDONLY)


# ---- the origin's registry API over HTTP ------------------------------------------


async def origin_attempt(tmp_path: Path, tamper: Tamper, http: aiohttp.ClientSession) -> Attempt:
    blob = os.urandom(BLOB_SIZE)
    digest = Digest.of_bytes(blob)
    store = BlobStore(tmp_path / "agent")
    async with blob_server(blob, tamper.apply(blob)) as base:
        source = OriginHttpSource(OriginClient(http, base), store, timeout=5.0, resume_attempts=1)
        try:
            transfer = await source.start(digest, REPO)
        except SourceUnavailable:
            return Attempt(digest, blob, store, Outcome.REFUSED, b"")
        received, outcome = await stream(transfer)
    return Attempt(digest, blob, store, outcome, received)


def blob_server(blob: bytes, served: bytes) -> contextlib.AbstractAsyncContextManager[str]:
    """Declares the blob's length, sends ``served`` (honouring Range), cuts what is short."""

    async def get(request: web.Request) -> web.StreamResponse:
        offset = request.http_range.start or 0
        response = web.StreamResponse(status=206 if offset else 200)
        response.content_length = len(blob) - offset
        await response.prepare(request)
        await response.write(served[offset:])
        if len(served) < len(blob):
            raise ConnectionResetError("the origin went away mid-blob")
        await response.write_eof()
        return response

    return fake_origin({"/v2/{name:.+}/blobs/{digest}": get})


# ---- the swarm ---------------------------------------------------------------------


async def swarm_attempt(tmp_path: Path, tamper: Tamper, http: aiohttp.ClientSession) -> Attempt:
    blob = os.urandom(BLOB_SIZE)
    digest = Digest.of_bytes(blob)
    seeder_store, store = BlobStore(tmp_path / "seeder"), BlobStore(tmp_path / "agent")
    # The seeder holds the served bytes under the blob's name, as a lying origin would.
    path = seeder_store.path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tamper.apply(blob))
    metainfo = make_metainfo(path, digest)
    async with (
        running_tracker() as tracker,
        metainfo_server(digest, metainfo) as metainfo_base,
        SwarmEngine(SwarmSettings(tracker + "/announce", origin=True), seeder_store) as seeder,
        SwarmEngine(SwarmSettings(tracker + "/announce"), store) as engine,
    ):
        await seeder.seed(digest, metainfo)
        source = SwarmSource(engine, [OriginClient(http, metainfo_base)])
        try:
            transfer = await source.start(digest, REPO)
        except SourceUnavailable:
            return Attempt(digest, blob, store, Outcome.REFUSED, b"")
        received, outcome = await stream(transfer)
    return Attempt(digest, blob, store, outcome, received)


def metainfo_server(digest: Digest, metainfo: bytes) -> contextlib.AbstractAsyncContextManager[str]:
    async def get(request: web.Request) -> web.Response:
        if request.match_info["digest"] != str(digest):
            return web.Response(status=404)
        return web.Response(body=metainfo)

    return fake_origin({METAINFO.route: get})


# ---- the delta path -----------------------------------------------------------------


async def delta_attempt(tmp_path: Path, tamper: Tamper, http: aiohttp.ClientSession) -> Attempt:
    v1, v2, delta = versions_with_a_delta(tmp_path)
    rebuilt = await rebuild_with(tmp_path, v1, v2, tamper.apply(delta))
    target = Digest.parse(v2.layers[1].digest)
    outcome = Outcome.PUBLISHED if rebuilt.ok else Outcome.REFUSED
    return Attempt(target, v2.layers[1].data, rebuilt.store, outcome, None)


HARNESSES: dict[str, Harness] = {
    "origin": origin_attempt,
    "swarm": swarm_attempt,
    "delta": delta_attempt,
}
