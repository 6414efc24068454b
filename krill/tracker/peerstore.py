"""Where the tracker keeps who is in which swarm: in memory, or in Redis.

Both stores hold, per infohash, one entry per peer address (ip, port) with
whether it is a seeder, whether it is an origin, and when it expires. On
loopback every peer has the same IP, so the address includes the port.

The Redis store lets several trackers behind one address share one view and
survive restarts: each swarm is a Redis hash ``krill:tracker:<infohash hex>``
mapping ``ip|port`` to ``expires|seeder|origin``. ``expires`` is on the Redis
server's clock (its ``TIME``, read inside the scripts that write and read a
swarm), never a tracker's: trackers sharing the database may disagree about
the time, and with their own clocks a tracker running an hour ahead would
drop every peer the others record, and one running behind would keep dead
peers for an hour (tests/test_faults_clock_skew.py). A ``PeerEntry`` keeps
its ``expires`` on the local clock; the store moves it between clocks by the
time left. Expired fields are removed
lazily when the swarm is read -- each only if it still holds the value that
was read, because another tracker may have refreshed the peer in between --
and the whole key carries a Redis TTL so a swarm nobody announces to any
more disappears by itself.

The memory store has no TTL to lean on, so the server runs ``sweep``
periodically (``sweep_interval``): without it a swarm nobody announces to
again would stay in memory, and in the swarm count, forever.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError


class PeerStoreUnavailable(Exception):
    """The store cannot be reached (Redis down): the announce can be retried later."""


@contextlib.contextmanager
def _unavailable_on_redis_errors() -> Iterator[None]:
    """Redis' own errors (connection refused, timeouts) as the store's one error type."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise PeerStoreUnavailable(f"the tracker's Redis is unreachable ({exc})") from exc


@dataclass(frozen=True, slots=True)
class PeerEntry:
    ip: str
    port: int
    seeder: bool
    origin: bool
    expires: float


class PeerStore(Protocol):
    async def upsert(self, info_hash: bytes, entry: PeerEntry, ttl: int) -> None: ...
    async def remove(self, info_hash: bytes, ip: str, port: int) -> None: ...
    async def peers(self, info_hash: bytes) -> list[PeerEntry]: ...
    async def swarm_count(self) -> int: ...
    async def sweep(self) -> int: ...
    async def close(self) -> None: ...


def sweep_interval(peer_ttl: int) -> float:
    """How often expired peers are swept: twice per TTL, so none outlives it by more than half."""
    return peer_ttl / 2


class MemoryPeerStore:
    """Peers in a dict; lost on restart (clients re-announce within one interval)."""

    def __init__(self) -> None:
        self._swarms: dict[bytes, dict[tuple[str, int], PeerEntry]] = {}

    async def upsert(self, info_hash: bytes, entry: PeerEntry, ttl: int) -> None:
        self._swarms.setdefault(info_hash, {})[(entry.ip, entry.port)] = entry

    async def remove(self, info_hash: bytes, ip: str, port: int) -> None:
        swarm = self._swarms.get(info_hash)
        if swarm is not None:
            swarm.pop((ip, port), None)
            if not swarm:
                del self._swarms[info_hash]

    async def peers(self, info_hash: bytes) -> list[PeerEntry]:
        if info_hash not in self._swarms:
            return []
        swarm = self._drop_expired(info_hash, time.time())
        return list(swarm.values())

    async def swarm_count(self) -> int:
        """Swarms with at least one live peer (expired ones are swept first)."""
        await self.sweep()
        return len(self._swarms)

    async def sweep(self) -> int:
        """Forget expired peers, and swarms left empty, everywhere; returns how many peers."""
        now = time.time()
        before = sum(len(swarm) for swarm in self._swarms.values())
        for info_hash in list(self._swarms):
            self._drop_expired(info_hash, now)
        return before - sum(len(swarm) for swarm in self._swarms.values())

    def __len__(self) -> int:
        """Swarms held in memory right now, swept or not."""
        return len(self._swarms)

    def _drop_expired(self, info_hash: bytes, now: float) -> dict[tuple[str, int], PeerEntry]:
        swarm = self._swarms[info_hash]
        for key in [k for k, e in swarm.items() if e.expires <= now]:
            del swarm[key]
        if not swarm:
            del self._swarms[info_hash]
        return swarm

    async def close(self) -> None:
        self._swarms.clear()


class RedisPeerStore:
    """Peers in Redis, shared by every tracker pointed at the same database."""

    PREFIX = "krill:tracker:"

    # Delete each field only if it still holds the value this tracker read: between that read
    # and this delete another tracker may have refreshed the peer, and that entry must stay.
    DELETE_UNCHANGED = """
    local removed = 0
    for i = 1, #ARGV, 2 do
        if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
            removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
        end
    end
    return removed
    """

    # One round trip: the entry's expiry is Redis' own time plus the seconds it has left.
    UPSERT = """
    local now = redis.call('TIME')
    local expires = tonumber(now[1]) + tonumber(now[2]) / 1000000 + tonumber(ARGV[2])
    redis.call('HSET', KEYS[1], ARGV[1], string.format("%.6f", expires) .. ARGV[3])
    redis.call('EXPIRE', KEYS[1], ARGV[4])
    """

    # The swarm and Redis' time in one read, so expiry is judged on the clock that set it.
    SNAPSHOT = """
    local now = redis.call('TIME')
    return {now[1], now[2], redis.call('HGETALL', KEYS[1])}
    """

    def __init__(self, url: str) -> None:
        self._redis = aioredis.Redis.from_url(url)
        self._delete_unchanged = self._redis.register_script(self.DELETE_UNCHANGED)
        self._upsert = self._redis.register_script(self.UPSERT)
        self._read = self._redis.register_script(self.SNAPSHOT)

    async def upsert(self, info_hash: bytes, entry: PeerEntry, ttl: int) -> None:
        left = entry.expires - time.time()
        flags = f"|{int(entry.seeder)}|{int(entry.origin)}"
        field = _field(entry.ip, entry.port)
        with _unavailable_on_redis_errors():
            await self._upsert(
                keys=[self._key(info_hash)], args=[field, f"{left:.6f}", flags, ttl * 2]
            )

    async def remove(self, info_hash: bytes, ip: str, port: int) -> None:
        with _unavailable_on_redis_errors():
            await self._redis.hdel(self._key(info_hash), _field(ip, port))

    async def peers(self, info_hash: bytes) -> list[PeerEntry]:
        with _unavailable_on_redis_errors():
            return await self._live_peers(self._key(info_hash))

    async def _live_peers(self, key: str) -> list[PeerEntry]:
        redis_now, raw = await self._snapshot(key)
        to_local = time.time() - redis_now  # expiries come back on this tracker's clock
        live, expired = [], []
        for field, value in raw.items():
            entry = _parse_entry(field, value)
            if entry is None or entry.expires <= redis_now:
                expired += [field, value]
            else:
                live.append(dataclasses.replace(entry, expires=entry.expires + to_local))
        if expired:
            await self._delete_unchanged(keys=[key], args=expired)
        return live

    async def sweep(self) -> int:
        """Nothing to do: each swarm's key expires by itself, and fields are dropped on read."""
        return 0

    async def swarm_count(self) -> int:
        count = 0
        async for _ in self._redis.scan_iter(match=self.PREFIX + "*", count=1000):
            count += 1
        return count

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()

    async def _snapshot(self, key: str) -> tuple[float, dict[bytes, bytes]]:
        """Redis' time and the swarm's hash as it is now (a separate step so tests can
        interleave other writers)."""
        seconds, micros, flat = await self._read(keys=[key])
        # The client is made without decode_responses, so redis-py hands back bytes;
        # its stubs cannot know that.
        fields = cast(list[bytes], flat)
        return int(seconds) + int(micros) / 1e6, dict(zip(fields[::2], fields[1::2], strict=True))

    def _key(self, info_hash: bytes) -> str:
        return self.PREFIX + info_hash.hex()


def _field(ip: str, port: int) -> str:
    # "|" never occurs in an IPv4 or IPv6 literal, unlike ":".
    return f"{ip}|{port}"


def _parse_entry(field: bytes, value: bytes) -> PeerEntry | None:
    try:
        ip, port = field.decode().rsplit("|", 1)
        expires, seeder, origin = value.decode().split("|")
        return PeerEntry(ip, int(port), seeder == "1", origin == "1", float(expires))
    except ValueError:
        return None  # written by something else; treat as expired and clean it up
