"""The tracker's peer-store contract, run against every store (memory and a real Redis).

Spegel's ``storetest`` model: one suite states what a ``PeerStore`` promises
and every implementation must pass all of it, so a second store cannot drift
from the first in the details the tracker relies on (an upsert replaces the
peer at an address, an expired peer is never handed out, a stop removes the
peer, addresses are kept verbatim for the announce layer to judge). What only
one store does (Redis: sharing between trackers, key TTLs; memory: the sweep
task) stays in tests/test_tracker_redis.py and tests/test_tracker.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from krill.tracker.peerstore import MemoryPeerStore, PeerEntry, PeerStore, RedisPeerStore

SWARM = bytes(range(20))
OTHER_SWARM = bytes(20)
TTL = 60


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[PeerStore]:
    """Each implementation, empty; the Redis one on the shared test redis-server."""
    made: PeerStore
    if request.param == "redis":
        made = RedisPeerStore(request.getfixturevalue("redis_url"))
    else:
        made = MemoryPeerStore()
    try:
        yield made
    finally:
        await made.close()


def live(ip: str, port: int, *, seeder: bool = False, origin: bool = False) -> PeerEntry:
    return PeerEntry(ip, port, seeder, origin, time.time() + TTL)


def expired(ip: str, port: int) -> PeerEntry:
    return PeerEntry(ip, port, False, False, time.time() - 1)


def addresses(peers: list[PeerEntry]) -> set[tuple[str, int]]:
    return {(p.ip, p.port) for p in peers}


async def test_an_unknown_swarm_has_no_peers(store: PeerStore) -> None:
    assert await store.peers(SWARM) == []
    assert await store.swarm_count() == 0


async def test_a_peer_is_listed_as_it_announced(store: PeerStore) -> None:
    entry = live("127.0.0.1", 7001, seeder=True, origin=True)
    await store.upsert(SWARM, entry, TTL)
    [listed] = await store.peers(SWARM)
    assert (listed.ip, listed.port, listed.seeder, listed.origin) == ("127.0.0.1", 7001, True, True)
    assert listed.expires == pytest.approx(entry.expires, abs=0.01)  # Redis keeps milliseconds
    assert await store.swarm_count() == 1


async def test_an_upsert_replaces_the_peer_at_its_address(store: PeerStore) -> None:
    """A downloader that completes announces again from the same address: it is now a seeder."""
    await store.upsert(SWARM, live("127.0.0.1", 7001), TTL)
    await store.upsert(SWARM, live("127.0.0.1", 7001, seeder=True), TTL)
    [listed] = await store.peers(SWARM)
    assert listed.seeder


async def test_an_address_is_ip_and_port_kept_verbatim(store: PeerStore) -> None:
    """On loopback every peer shares the IP; whether an IP can be packed is the answer's
    business (it skips what it cannot pack), so the store keeps any string."""
    ips = ["127.0.0.1", "2001:db8::7", "fe80::1%eth0", "not an address"]
    for port, ip in enumerate(ips, start=7001):
        await store.upsert(SWARM, live(ip, port), TTL)
    await store.upsert(SWARM, live("127.0.0.1", 7100), TTL)
    expected = {(ip, port) for port, ip in enumerate(ips, start=7001)} | {("127.0.0.1", 7100)}
    assert addresses(await store.peers(SWARM)) == expected


async def test_swarms_are_kept_apart(store: PeerStore) -> None:
    await store.upsert(SWARM, live("127.0.0.1", 7001), TTL)
    await store.upsert(OTHER_SWARM, live("127.0.0.1", 7002), TTL)
    assert addresses(await store.peers(SWARM)) == {("127.0.0.1", 7001)}
    assert addresses(await store.peers(OTHER_SWARM)) == {("127.0.0.1", 7002)}
    assert await store.swarm_count() == 2


async def test_a_removed_peer_is_gone_and_its_empty_swarm_not_counted(store: PeerStore) -> None:
    await store.upsert(SWARM, live("127.0.0.1", 7001), TTL)
    await store.upsert(SWARM, live("127.0.0.1", 7002), TTL)
    await store.remove(SWARM, "127.0.0.1", 7001)
    assert addresses(await store.peers(SWARM)) == {("127.0.0.1", 7002)}
    await store.remove(SWARM, "127.0.0.1", 7002)
    await store.remove(SWARM, "127.0.0.1", 7002)  # a second stop is harmless
    await store.remove(OTHER_SWARM, "127.0.0.1", 7002)  # as is one for an unknown swarm
    assert await store.peers(SWARM) == []
    assert await store.swarm_count() == 0


async def test_an_expired_peer_is_never_handed_out(store: PeerStore) -> None:
    await store.upsert(SWARM, expired("127.0.0.1", 7001), TTL)
    await store.upsert(SWARM, live("127.0.0.1", 7002), TTL)
    assert addresses(await store.peers(SWARM)) == {("127.0.0.1", 7002)}
    assert addresses(await store.peers(SWARM)) == {("127.0.0.1", 7002)}  # and not brought back


async def test_a_swarm_whose_peers_all_expired_is_not_counted_once_read(store: PeerStore) -> None:
    """Read first: the memory store also leaves such swarms out unread, but a Redis swarm is
    a key, which lives until its peers are read (and dropped) or its TTL ends."""
    await store.upsert(SWARM, expired("127.0.0.1", 7001), TTL)
    await store.upsert(OTHER_SWARM, live("127.0.0.1", 7002), TTL)
    assert await store.peers(SWARM) == []
    assert await store.swarm_count() == 1


async def test_a_sweep_keeps_every_live_peer(store: PeerStore) -> None:
    await store.upsert(SWARM, live("127.0.0.1", 7001), TTL)
    await store.upsert(SWARM, expired("127.0.0.1", 7002), TTL)
    assert await store.sweep() >= 0
    assert addresses(await store.peers(SWARM)) == {("127.0.0.1", 7001)}
    assert await store.swarm_count() == 1
