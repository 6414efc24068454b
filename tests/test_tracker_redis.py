"""Trackers sharing one real redis-server: one swarm view, nothing lost on restart."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
import redis.asyncio as aioredis

from krill.tracker.peerstore import PeerEntry, RedisPeerStore
from tests.components import free_port, krill_command
from tests.swarm_helpers import running_tracker
from tests.test_tracker import INFO_HASH, announce, peer_id, ports_of


async def test_two_trackers_hand_out_each_others_peers(redis_url: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        running_tracker(redis=redis_url) as one,
        running_tracker(redis=redis_url) as two,
    ):
        await announce(http, one, port=7001, pid=peer_id(1), event="started")
        await announce(http, two, port=7002, pid=peer_id(2), event="completed", left=0)
        assert ports_of(await announce(http, one, port=7001, pid=peer_id(1))) == [7002]
        assert ports_of(await announce(http, two, port=7002, pid=peer_id(2))) == [7001]
        # A stop through one tracker is seen by the other.
        await announce(http, one, port=7001, pid=peer_id(1), event="stopped")
        assert ports_of(await announce(http, two, port=7003, pid=peer_id(3))) == [7002]


async def test_a_restarted_tracker_keeps_its_peers(redis_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with running_tracker(redis=redis_url) as before:
            for port in (7001, 7002, 7003):
                await announce(http, before, port=port, pid=peer_id(port), event="started")
        async with running_tracker(redis=redis_url) as after:
            answer = await announce(http, after, port=7009, pid=peer_id(9))
            assert sorted(ports_of(answer)) == [7001, 7002, 7003]
            assert answer[b"incomplete"] == 4


async def test_expired_peers_are_cleaned_out_of_redis(redis_url: str) -> None:
    """Not handing them out is the stores' contract (tests/test_peerstore_conformance.py);
    in Redis, reading a swarm also deletes its expired fields."""
    store = RedisPeerStore(redis_url)
    try:
        now = time.time()
        await store.upsert(INFO_HASH, PeerEntry("127.0.0.1", 7001, False, False, now), 1)
        # ttl 60: with 1, its key could expire (EXPIRE ttl+1) before the scan below.
        await store.upsert(INFO_HASH, PeerEntry("127.0.0.1", 7002, False, False, now + 60), 60)
        assert [p.port for p in await store.peers(INFO_HASH)] == [7002]
    finally:
        await store.close()
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match="krill:tracker:*")]
        assert len(keys) == 1
        assert list(await client.hkeys(keys[0])) == [b"127.0.0.1|7002"]
    finally:
        await client.aclose()


async def test_foreign_fields_with_newlines_are_read_and_cleaned_up(redis_url: str) -> None:
    """A swarm comes back from Redis as one newline-joined string; a field or value holding a
    newline (written by something else in the database) must not shift the others."""
    store = RedisPeerStore(redis_url)
    client = aioredis.Redis.from_url(redis_url)
    key = RedisPeerStore.PREFIX + INFO_HASH.hex()
    try:
        seeder = PeerEntry("127.0.0.1", 7001, True, False, time.time() + 60)
        await store.upsert(INFO_HASH, seeder, 60)
        await client.hset(key, "odd\nfield", "1|0|0")
        await client.hset(key, "127.0.0.1|7002", "later\n|0|0")
        view = await store.record(
            INFO_HASH, PeerEntry("127.0.0.1", 7003, False, False, time.time() + 60), 60
        )
        assert sorted(p.port for p in view.peers) == [7001, 7003]
        assert (view.seeders, view.leechers) == (1, 1)
        assert sorted(await client.hkeys(key)) == [b"127.0.0.1|7001", b"127.0.0.1|7003"]
        # Without them, the joined reply again.
        assert sorted(p.port for p in await store.peers(INFO_HASH)) == [7001, 7003]
    finally:
        await store.close()
        await client.aclose()


async def test_each_swarm_key_expires_by_itself(redis_url: str) -> None:
    """The key TTL is what forgets a swarm nobody announces to (Redis has no sweep)."""
    async with (
        aiohttp.ClientSession() as http,
        running_tracker(redis=redis_url, interval=30, peer_ttl=90) as base,
    ):
        await announce(http, base, port=7001, pid=peer_id(1))
    client = aioredis.Redis.from_url(redis_url)
    try:
        [key] = [k async for k in client.scan_iter(match="krill:tracker:*")]
        assert 0 < await client.ttl(key) <= 2 * 90
    finally:
        await client.aclose()


class ReadThenOtherTrackerWrites(RedisPeerStore):
    """A store whose read of a swarm is followed at once by another tracker's write."""

    def __init__(self, url: str, then: Callable[[], Awaitable[None]]) -> None:
        super().__init__(url)
        self._then = then

    async def _snapshot(self, key: str) -> tuple[float, dict[bytes, bytes]]:
        raw = await super()._snapshot(key)
        await self._then()
        return raw


async def test_cleaning_up_an_expired_peer_keeps_a_refresh_from_another_tracker(
    redis_url: str,
) -> None:
    other = RedisPeerStore(redis_url)

    async def other_tracker_refreshes() -> None:
        fresh = PeerEntry("10.0.0.9", 6881, True, False, time.time() + 90)
        await other.upsert(INFO_HASH, fresh, 90)

    this = ReadThenOtherTrackerWrites(redis_url, other_tracker_refreshes)
    try:
        stale = PeerEntry("10.0.0.9", 6881, True, False, time.time() - 1)
        await this.upsert(INFO_HASH, stale, 90)
        assert await this.peers(INFO_HASH) == []  # it read the stale entry
        [refreshed] = await other.peers(INFO_HASH)
        assert (refreshed.ip, refreshed.port) == ("10.0.0.9", 6881)
        assert refreshed.expires > time.time()
    finally:
        await this.close()
        await other.close()


async def test_an_unreachable_redis_fails_at_start() -> None:
    with pytest.raises(Exception, match=r"(?i)connect"):
        async with running_tracker(redis=f"redis://127.0.0.1:{free_port()}/0"):
            pass


def test_the_cli_says_in_one_line_when_redis_is_unreachable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    proc = subprocess.run(
        krill_command("tracker", "--listen", f"127.0.0.1:{free_port()}", "--redis", url),
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]  # after the start-up log line
    assert last.startswith(f"krill tracker: error: cannot use Redis at {url}")
    assert "Traceback" not in proc.stderr


async def test_a_swarm_view_is_reused_only_while_its_members_are_unchanged(
    redis_url: str,
) -> None:
    """Re-announces move only expiries, so the last view serves; a join, a peer that
    completes, or another tracker's write to the swarm makes a new one."""
    store = RedisPeerStore(redis_url)
    other = RedisPeerStore(redis_url)  # a second tracker on the same database
    try:
        def entry(port: int, seeder: bool = False) -> PeerEntry:
            return PeerEntry("127.0.0.1", port, seeder, False, time.time() + 60)

        first = await store.record(INFO_HASH, entry(7001), 60)
        second = await store.record(INFO_HASH, entry(7001), 60)
        assert second is first
        joined = await store.record(INFO_HASH, entry(7002), 60)
        assert joined is not first and joined.leechers == 2
        await other.record(INFO_HASH, entry(7003, seeder=True), 60)
        seen = await store.record(INFO_HASH, entry(7001), 60)
        assert seen is not joined and (seen.seeders, seen.leechers) == (1, 2)
        completed = await store.record(INFO_HASH, entry(7002, seeder=True), 60)
        assert (completed.seeders, completed.leechers) == (2, 1)
    finally:
        await store.close()
        await other.close()
