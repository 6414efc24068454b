"""The BitTorrent HTTP tracker: announce protocol, handout policy, bad requests, metainfo."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp
import pytest
import yarl

from krill import bencode
from krill.blobstore import BlobStore
from krill.endpoints import METAINFO
from krill.metainfo import make_metainfo
from krill.originclient import fetch_metainfo
from krill.tracker.announce import parse_announce
from krill.tracker.config import TrackerConfig
from krill.tracker.peerstore import MemoryPeerStore, PeerEntry, PeerStore
from krill.tracker.server import STORE_KEY, create_app
from tests.components import free_port
from tests.metrics_text import parse_metrics
from tests.polling import until
from tests.swarm_helpers import running_origin, running_tracker, serving

INFO_HASH = bytes(range(20))


def peer_id(n: int, prefix: bytes = b"-KA0100-") -> bytes:
    return prefix + b"%012d" % n


async def announce(
    session: aiohttp.ClientSession, base: str, *, port: int | None = 6881,
    info_hash: bytes | None = INFO_HASH, pid: bytes = peer_id(1), **params: object,
) -> dict[bytes, Any]:
    """One GET /announce with raw percent-encoded binary params; returns the decoded answer."""
    query = {"uploaded": 0, "downloaded": 0, "left": 100, "compact": 1, **params}
    parts = [f"peer_id={quote_from_bytes(pid)}"]
    if info_hash is not None:
        parts.append(f"info_hash={quote_from_bytes(info_hash)}")
    if port is not None:
        parts.append(f"port={port}")
    parts += [f"{k}={v}" for k, v in query.items() if v is not None]
    url = yarl.URL(f"{base}/announce?{'&'.join(parts)}", encoded=True)
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        return bencode.decode(await response.read())


def ports_of(answer: dict[bytes, object]) -> list[int]:
    raw = answer[b"peers"]
    assert isinstance(raw, bytes) and len(raw) % 6 == 0
    out = []
    for i in range(0, len(raw), 6):
        assert socket.inet_ntoa(raw[i : i + 4]) == "127.0.0.1"
        out.append(struct.unpack("!H", raw[i + 4 : i + 6])[0])
    return out


async def test_announce_hands_out_others_never_the_asker(http: aiohttp.ClientSession) -> None:
    async with running_tracker() as base:
        first = await announce(http, base, port=7001, pid=peer_id(1), event="started")
        assert ports_of(first) == []
        assert first[b"interval"] == 30 and first[b"min interval"] == 5
        second = await announce(http, base, port=7002, pid=peer_id(2), event="started")
        assert ports_of(second) == [7001]
        again = await announce(http, base, port=7001, pid=peer_id(1))
        assert ports_of(again) == [7002]
        assert again[b"incomplete"] == 2 and again[b"complete"] == 0


async def test_seeders_and_origins_come_first(http: aiohttp.ClientSession) -> None:
    async with running_tracker() as base:
        for port in range(7100, 7110):  # ten downloaders
            await announce(http, base, port=port, pid=peer_id(port), event="started")
        await announce(http, base, port=7200, pid=peer_id(7200), event="completed", left=0)
        await announce(http, base, port=7300, pid=peer_id(7300, b"-KO0100-"), left=0)
        for _ in range(5):
            answer = await announce(http, base, port=7400, pid=peer_id(7400), numwant=4)
            ports = ports_of(answer)
            assert len(ports) == 4
            assert set(ports[:2]) == {7200, 7300}, ports
            assert 7400 not in ports
        assert answer[b"complete"] == 2


async def test_a_seeder_asking_gets_no_seeders(http: aiohttp.ClientSession) -> None:
    """It needs nothing from them; downloaders are who it should meet."""
    async with running_tracker() as base:
        for port in (7100, 7101, 7102):
            await announce(http, base, port=port, pid=peer_id(port), event="started")
        await announce(http, base, port=7200, pid=peer_id(7200), event="completed", left=0)
        await announce(http, base, port=7300, pid=peer_id(7300, b"-KO0100-"), left=0)
        seeder = await announce(http, base, port=7500, pid=peer_id(7500), left=0)
        assert sorted(ports_of(seeder)) == [7100, 7101, 7102]
        downloader = await announce(http, base, port=7600, pid=peer_id(7600))
        assert {7200, 7300, 7500} <= set(ports_of(downloader))


async def test_stopped_peers_leave_and_completed_become_seeders(
    http: aiohttp.ClientSession,
) -> None:
    async with running_tracker() as base:
        await announce(http, base, port=7001, pid=peer_id(1), event="started")
        await announce(http, base, port=7002, pid=peer_id(2), event="started")
        done = await announce(http, base, port=7002, pid=peer_id(2), event="completed", left=0)
        assert done[b"complete"] == 1 and done[b"incomplete"] == 1
        await announce(http, base, port=7002, pid=peer_id(2), event="stopped")
        assert ports_of(await announce(http, base, port=7001, pid=peer_id(1))) == []


async def test_numwant_is_capped_and_non_compact_lists_work(http: aiohttp.ClientSession) -> None:
    async with running_tracker(max_numwant=3) as base:
        for port in range(7000, 7010):
            await announce(http, base, port=port, pid=peer_id(port))
        assert len(ports_of(await announce(http, base, port=8000, numwant=99999))) == 3
        listed = await announce(http, base, port=8000, compact=0)
        assert isinstance(listed[b"peers"], list) and len(listed[b"peers"]) == 3
        assert all(p[b"ip"] == b"127.0.0.1" for p in listed[b"peers"])




@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"info_hash": None}, b"missing info_hash"),
        ({"info_hash": b"short"}, b"info_hash must be 20 bytes"),
        ({"info_hash": bytes(21)}, b"info_hash must be 20 bytes"),
        ({"port": None}, b"missing port"),
        ({"port": 0}, b"port must be 1-65535"),
        ({"port": 70000}, b"port must be 1-65535"),
        ({"port": "http"}, b"port must be an integer"),
        ({"numwant": 10**30}, b"numwant must be an integer"),
        ({"numwant": -1}, b"numwant must not be negative"),
        ({"left": "lots"}, b"left must be an integer"),
        ({"left": None}, b"missing left"),
        # Latin-1 digits other than 0-9: "\xb2" is "²", which str.isdigit() accepts.
        ({"port": "%B2"}, b"port must be an integer"),
        ({"left": "%B9"}, b"left must be an integer"),
        ({"numwant": "%B3"}, b"numwant must be an integer"),
        ({"port": "%D9%A3"}, b"port must be an integer"),  # Arabic-Indic digit three
        ({"event": "exploded"}, b"unknown event"),
        ({"pid": b"short"}, b"peer_id must be 20 bytes"),
    ],
)
async def test_bad_announces_get_a_bencoded_failure(
    http: aiohttp.ClientSession, kwargs: dict[str, Any], reason: bytes
) -> None:
    async with running_tracker() as base:
        answer = await announce(http, base, **kwargs)  # asserts HTTP 200
        assert set(answer) == {b"failure reason", b"interval", b"min interval"}
        assert reason in answer[b"failure reason"]
        # libtorrent takes a failure without an interval as "again in 1800 s"
        assert answer[b"interval"] == answer[b"min interval"] == 30


async def test_metainfo_is_fetched_from_an_origin_and_cached(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    store = BlobStore(tmp_path / "origin")
    digest = store.put_bytes(os.urandom(300_000))
    origin_port, tracker_port = free_port(), free_port()
    origin_url = f"http://127.0.0.1:{origin_port}"
    announce_url = f"http://127.0.0.1:{tracker_port}/announce"
    async with running_tracker(tracker_port, origin=[origin_url]) as tracker_url:
        async with running_origin(store, announce_url, origin_port):
            direct = await fetch_metainfo(http, origin_url, digest)
            via_tracker = await fetch_metainfo(http, tracker_url, digest)
            assert via_tracker == direct == make_metainfo(store.path(digest), digest)
            assert store.sidecar_path(digest, "torrent").read_bytes() == direct
            async with http.get(f"{tracker_url}/metainfo/sha256:{'0' * 64}") as missing:
                assert missing.status == 404
                assert "no origin could provide" in await missing.text()
            async with http.get(METAINFO.url(tracker_url, "sha256:nothex")) as bad:
                assert bad.status == 400
        # The origin is gone; the tracker answers from its cache.
        assert await fetch_metainfo(http, tracker_url, digest) == direct
        async with http.get(METAINFO.url(tracker_url, digest)) as answer:
            assert answer.headers["Content-Type"] == "application/x-bittorrent"


@contextlib.asynccontextmanager
async def tracker_and_store(**settings: object) -> AsyncIterator[tuple[str, PeerStore]]:
    """A tracker on loopback and its peer store, for entries no loopback client can make."""
    # The settings are TrackerConfig's own keywords, of several types.
    config = TrackerConfig(listen="127.0.0.1:0", **settings)  # type: ignore[arg-type]
    app = create_app(config)
    async with serving(app) as base:
        yield base, app[STORE_KEY]


def entry(ip: str, port: int, seeder: bool = False) -> PeerEntry:
    return PeerEntry(ip, port, seeder, False, time.time() + 60)


async def test_an_announce_is_kept_for_the_peer_ttl(http: aiohttp.ClientSession) -> None:
    """That an expired peer is never handed out is the stores' contract
    (tests/test_peerstore_conformance.py); the tracker's part is when a peer expires."""
    async with tracker_and_store(interval=30, peer_ttl=90) as (base, store):
        before = time.time()
        await announce(http, base, port=7001, pid=peer_id(1))
        after = time.time()
        [kept] = await store.peers(INFO_HASH)
        assert before + 90 <= kept.expires <= after + 90


async def test_ipv6_peers_are_handed_out_in_peers6(http: aiohttp.ClientSession) -> None:
    async with tracker_and_store() as (base, store):
        await store.upsert(INFO_HASH, entry("2001:db8::7", 7001), 60)
        await store.upsert(INFO_HASH, entry("127.0.0.1", 7002), 60)
        answer = await announce(http, base, port=7003)
        assert ports_of(answer) == [7002]
        assert answer[b"peers6"] == socket.inet_pton(socket.AF_INET6, "2001:db8::7") + struct.pack(
            "!H", 7001
        )
        listed = await announce(http, base, port=7003, compact=0)
        assert sorted(p[b"ip"] for p in listed[b"peers"]) == [b"127.0.0.1", b"2001:db8::7"]


def test_a_scoped_ipv6_address_is_stored_without_its_zone() -> None:
    params = {"info_hash": INFO_HASH, "peer_id": peer_id(1), "port": b"6881", "left": b"0"}
    parsed = parse_announce(params, "fe80::1%eth0", default_numwant=50, max_numwant=200)
    assert parsed.ip == "fe80::1"
    mapped = parse_announce(params, "::ffff:10.1.2.3", default_numwant=50, max_numwant=200)
    assert mapped.ip == "10.1.2.3"


async def test_an_unpackable_stored_peer_is_skipped_not_a_500(
    http: aiohttp.ClientSession,
) -> None:
    """An entry another tracker (or an older version) stored must not break the swarm."""
    async with tracker_and_store() as (base, store):
        await store.upsert(INFO_HASH, entry("fe80::1%eth0", 7001, seeder=True), 60)
        await store.upsert(INFO_HASH, entry("not an address", 7002), 60)
        await store.upsert(INFO_HASH, entry("127.0.0.1", 7003), 60)
        answer = await announce(http, base, port=7004)
        assert ports_of(answer) == [7003]
        zone_dropped = socket.inet_pton(socket.AF_INET6, "fe80::1") + struct.pack("!H", 7001)
        assert answer[b"peers6"] == zone_dropped


async def test_a_swarm_nobody_announces_to_again_is_forgotten(
    http: aiohttp.ClientSession,
) -> None:
    """The sweep runs on its own: no announce or metrics scrape is needed to free the memory."""
    async with tracker_and_store(interval=1, min_interval=1, peer_ttl=1) as (base, store):
        assert isinstance(store, MemoryPeerStore)
        for n in range(20):
            await announce(http, base, port=7001, info_hash=n.to_bytes(20, "big"))
        assert len(store) == 20
        # The peers expire after a second; the sweep runs every 0.5 s here.
        await until(lambda: len(store) == 0, "the sweep to forget every swarm")


async def test_the_swarm_count_leaves_out_swarms_whose_peers_expired(
    http: aiohttp.ClientSession,
) -> None:
    async with tracker_and_store(interval=60, peer_ttl=3600) as (base, store):
        await store.upsert(INFO_HASH, PeerEntry("127.0.0.1", 7001, False, False, time.time()), 1)
        await store.upsert(bytes(20), entry("127.0.0.1", 7002), 60)
        async with http.get(base + "/metrics") as metrics:
            assert parse_metrics(await metrics.text())["krill_tracker_swarms"] == 1


async def test_health_and_metrics(http: aiohttp.ClientSession) -> None:
    async with running_tracker() as base:
        await announce(http, base, port=7001)
        await announce(http, base, port=0)
        async with http.get(base + "/health") as health:
            assert (await health.json())["status"] == "ok"
        async with http.get(base + "/metrics") as metrics:
            values = parse_metrics(await metrics.text())
        assert values['krill_tracker_announces_total{event="none",result="ok"}'] == 1
        assert values['krill_tracker_announces_total{event="invalid",result="failure"}'] == 1
        assert values["krill_tracker_swarms"] == 1
        assert values["krill_tracker_peer_store_up"] == 1


async def test_past_max_swarms_a_new_swarm_waits_and_known_ones_go_on(
    http: aiohttp.ClientSession,
) -> None:
    """Announces for random info-hashes made one swarm each, without bound (200,000 took
    350 MB in 30 s in a review). Past ``max_swarms`` a new one gets a failure with when
    to retry, on the fast path and the slow one alike; swarms already held still answer."""
    async with running_tracker(max_swarms=2) as base:
        for n in (1, 2):
            await announce(http, base, info_hash=bytes([n]) * 20, port=7000 + n)
        for params in ({}, {"compact": 0}):  # the fast path (compact) and the slow one
            refused = await announce(http, base, info_hash=b"\x03" * 20, port=7003, **params)
            reason = refused[b"failure reason"].decode()
            assert "holds 2 swarms, its max_swarms" in reason
            assert refused[b"interval"] == 5
        again = await announce(http, base, info_hash=b"\x01" * 20, port=7004)
        assert ports_of(again) == [7001], "a swarm already held is answered as before"
