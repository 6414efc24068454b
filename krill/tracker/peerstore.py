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
again would stay in memory, and in the swarm count, forever. It keeps each
swarm's ``SwarmView`` (counts and packed handout, ``krill.tracker.swarmview``)
until the swarm changes, and scans a swarm for expired peers only once the
earliest expiry it knows of has passed. ``record`` is the announce path:
upsert and view in one call (for Redis, one script and one round trip).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Iterator
from typing import Protocol, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from krill.tracker.swarmview import PeerEntry, SwarmView


class PeerStoreUnavailable(Exception):
    """The store cannot be reached (Redis down): the announce can be retried later."""


@contextlib.contextmanager
def _unavailable_on_redis_errors() -> Iterator[None]:
    """Redis' own errors (connection refused, timeouts) as the store's one error type."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise PeerStoreUnavailable(f"the tracker's Redis is unreachable ({exc})") from exc


class PeerStore(Protocol):
    async def upsert(self, info_hash: bytes, entry: PeerEntry, ttl: int) -> None: ...
    async def remove(self, info_hash: bytes, ip: str, port: int) -> None: ...
    async def peers(self, info_hash: bytes) -> list[PeerEntry]: ...
    async def record(self, info_hash: bytes, entry: PeerEntry, ttl: int) -> SwarmView:
        """``upsert``, then the swarm's live peers as a view: the announce path in one step."""
        ...
    async def view(self, info_hash: bytes) -> SwarmView: ...
    async def swarm_count(self) -> int: ...
    async def sweep(self) -> int: ...
    async def close(self) -> None: ...


def sweep_interval(peer_ttl: int) -> float:
    """How often expired peers are swept: twice per TTL, so none outlives it by more than half."""
    return peer_ttl / 2


class _Swarm:
    """One swarm in memory: its peers by address, and its view while nothing has changed.

    ``next_expiry`` is no later than the earliest expiry of any peer, so until
    then a read needs no scan for expired peers (an upsert only lowers it).
    """

    __slots__ = ("entries", "next_expiry", "view")

    def __init__(self) -> None:
        self.entries: dict[tuple[str, int], PeerEntry] = {}
        self.next_expiry = math.inf
        self.view: SwarmView | None = None

    def put(self, entry: PeerEntry) -> None:
        key = (entry.ip, entry.port)
        old = self.entries.get(key)
        self.entries[key] = entry
        if old is None or old.seeder != entry.seeder or old.origin != entry.origin:
            self.view = None  # a re-announce that changes only the expiry keeps the view
        if entry.expires < self.next_expiry:
            self.next_expiry = entry.expires

    def drop_expired(self, now: float) -> None:
        if now < self.next_expiry:
            return
        entries = self.entries
        expired = [k for k, e in entries.items() if e.expires <= now]
        for key in expired:
            del entries[key]
        if expired:
            self.view = None
        self.next_expiry = min((e.expires for e in entries.values()), default=math.inf)

    def current_view(self) -> SwarmView:
        view = self.view
        if view is None:
            view = self.view = SwarmView(list(self.entries.values()))
        return view


_EMPTY = SwarmView([])


class SwarmLimitReached(PeerStoreUnavailable):
    """The memory store holds ``max_swarms`` live swarms: a new one must wait."""


# Live swarms a memory store holds. A cluster has one per blob being pulled or seeded
# (thousands); announces for random info-hashes made one each, 200,000 took 350 MB in
# 30 s (security review, stop 39), so past this a new swarm is refused until some expire.
DEFAULT_MAX_SWARMS = 100_000


class MemoryPeerStore:
    """Peers in a dict; lost on restart (clients re-announce within one interval)."""

    def __init__(self, max_swarms: int = DEFAULT_MAX_SWARMS) -> None:
        self._swarms: dict[bytes, _Swarm] = {}
        self._max_swarms = max_swarms
        self._next_sweep_when_full = 0.0

    def _new_swarm(self, info_hash: bytes, now: float) -> _Swarm:
        """A swarm for a new info-hash; SwarmLimitReached when ``max_swarms`` are live.

        At the limit, expired peers are swept first, at most once a second (a sweep
        walks every swarm: not once per announce of a flood)."""
        if len(self._swarms) >= self._max_swarms and now >= self._next_sweep_when_full:
            self._next_sweep_when_full = now + 1.0
            self._sweep_at(now)
        if len(self._swarms) >= self._max_swarms:
            raise SwarmLimitReached(
                f"this tracker holds {len(self._swarms)} swarms, its max_swarms; a new one "
                "must wait until others expire"
            )
        swarm = self._swarms[info_hash] = _Swarm()
        return swarm

    async def upsert(self, info_hash: bytes, entry: PeerEntry, ttl: int) -> None:
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            swarm = self._new_swarm(info_hash, time.time())
        swarm.put(entry)

    async def record(self, info_hash: bytes, entry: PeerEntry, ttl: int) -> SwarmView:
        return self.record_now(info_hash, entry, time.time())

    def record_now(self, info_hash: bytes, entry: PeerEntry, now: float) -> SwarmView:
        """``record`` without a coroutine, for the announce path: a re-announce that
        changes nothing but the expiry comes back with the cached view, inline."""
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            swarm = self._new_swarm(info_hash, now)
        swarm.put(entry)
        view = swarm.view
        if view is not None and now < swarm.next_expiry:
            return view
        return self._live(info_hash, swarm, now)

    async def remove(self, info_hash: bytes, ip: str, port: int) -> None:
        swarm = self._swarms.get(info_hash)
        if swarm is not None and swarm.entries.pop((ip, port), None) is not None:
            swarm.view = None
            if not swarm.entries:
                del self._swarms[info_hash]

    async def peers(self, info_hash: bytes) -> list[PeerEntry]:
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            return []
        self._live(info_hash, swarm, time.time())
        return list(swarm.entries.values())  # the view's copies may hold older expiries

    async def view(self, info_hash: bytes) -> SwarmView:
        swarm = self._swarms.get(info_hash)
        return _EMPTY if swarm is None else self._live(info_hash, swarm, time.time())

    async def swarm_count(self) -> int:
        """Swarms with at least one live peer (expired ones are swept first)."""
        await self.sweep()
        return len(self._swarms)

    async def sweep(self) -> int:
        """Forget expired peers, and swarms left empty, everywhere; returns how many peers."""
        return self._sweep_at(time.time())

    def _sweep_at(self, now: float) -> int:
        before = sum(len(swarm.entries) for swarm in self._swarms.values())
        for info_hash, swarm in list(self._swarms.items()):
            self._live(info_hash, swarm, now)
        return before - sum(len(swarm.entries) for swarm in self._swarms.values())

    def __len__(self) -> int:
        """Swarms held in memory right now, swept or not."""
        return len(self._swarms)

    def _live(self, info_hash: bytes, swarm: _Swarm, now: float) -> SwarmView:
        swarm.drop_expired(now)
        if not swarm.entries:
            del self._swarms[info_hash]
            return _EMPTY
        return swarm.current_view()

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
    # The hash comes back as one string, its fields and values joined by newlines: redis-py's
    # pure-Python reply parser took a third of an announce's CPU reading them as 2 x 32 replies
    # (docs/benchmarks.md). A field or value with a newline in it (written by something else)
    # sends the plain list instead.
    _SWARM_REPLY = """
    local flat = redis.call('HGETALL', KEYS[1])
    for i = 1, #flat do
        if string.find(flat[i], "\\n", 1, true) then
            return {now[1], now[2], flat}
        end
    end
    return {now[1], now[2], table.concat(flat, "\\n")}
    """

    SNAPSHOT = """
    local now = redis.call('TIME')
    """ + _SWARM_REPLY

    # An announce: UPSERT, then SNAPSHOT, in one round trip instead of two.
    UPSERT_AND_SNAPSHOT = """
    local now = redis.call('TIME')
    local expires = tonumber(now[1]) + tonumber(now[2]) / 1000000 + tonumber(ARGV[2])
    redis.call('HSET', KEYS[1], ARGV[1], string.format("%.6f", expires) .. ARGV[3])
    redis.call('EXPIRE', KEYS[1], ARGV[4])
    """ + _SWARM_REPLY

    # Swarms whose last view is kept for reuse (``_view_of``).
    VIEWS_KEPT = 4096

    def __init__(self, url: str) -> None:
        self._redis = aioredis.Redis.from_url(url)
        self._views: dict[str, tuple[tuple[tuple[object, ...], ...], SwarmView]] = {}
        self._delete_unchanged = self._redis.register_script(self.DELETE_UNCHANGED)
        self._upsert = self._redis.register_script(self.UPSERT)
        self._read = self._redis.register_script(self.SNAPSHOT)
        self._upsert_and_read = self._redis.register_script(self.UPSERT_AND_SNAPSHOT)

    async def upsert(self, info_hash: bytes, entry: PeerEntry, ttl: int) -> None:
        with _unavailable_on_redis_errors():
            await self._upsert(keys=[self._key(info_hash)], args=_upsert_args(entry, ttl))

    async def record(self, info_hash: bytes, entry: PeerEntry, ttl: int) -> SwarmView:
        """Upsert and read back in one script: one round trip per announce instead of two.

        Nothing is cached: other trackers sharing the database change swarms unseen.
        """
        key = self._key(info_hash)
        with _unavailable_on_redis_errors():
            answer = await self._upsert_and_read(keys=[key], args=_upsert_args(entry, ttl))
            return self._view_of(key, await self._live(key, *_snapshot_of(answer)))

    def _view_of(self, key: str, live: list[PeerEntry]) -> SwarmView:
        """A view of ``live``: the swarm's last one while the same peers of the same kinds
        are in it, in the same order; a new one otherwise.

        The swarm is read on every announce (other trackers change it unseen), but a
        re-announce usually changes only an expiry, which no answer uses. Building a view
        (two groups, 32 peers packed) was ~20 us of each announce's CPU; comparing the
        members is a few.
        """
        members = tuple(peer[:4] for peer in live)  # ip, port, seeder, origin
        kept = self._views.get(key)
        if kept is not None and kept[0] == members:
            return kept[1]
        view = SwarmView(live)
        if len(self._views) >= self.VIEWS_KEPT:
            del self._views[next(iter(self._views))]  # the oldest kept
        self._views[key] = (members, view)
        return view

    async def view(self, info_hash: bytes) -> SwarmView:
        return SwarmView(await self.peers(info_hash))

    async def remove(self, info_hash: bytes, ip: str, port: int) -> None:
        with _unavailable_on_redis_errors():
            await self._redis.hdel(self._key(info_hash), _field(ip, port))

    async def peers(self, info_hash: bytes) -> list[PeerEntry]:
        with _unavailable_on_redis_errors():
            return await self._live_peers(self._key(info_hash))

    async def _live_peers(self, key: str) -> list[PeerEntry]:
        return await self._live(key, *await self._snapshot(key))

    async def _live(self, key: str, redis_now: float, raw: dict[bytes, bytes]) -> list[PeerEntry]:
        """The live peers of ``raw`` (read at ``redis_now``); the expired ones are deleted."""
        to_local = time.time() - redis_now  # expiries come back on this tracker's clock
        live, expired = [], []
        for field, value in raw.items():
            entry = _parse_entry(field, value, redis_now, to_local)
            if entry is None:
                expired += [field, value]
            else:
                live.append(entry)
        if expired:
            await self._delete_unchanged(keys=[key], args=expired)
        return live

    async def sweep(self) -> int:
        """Nothing to do: each swarm's key expires by itself, and fields are dropped on read."""
        return 0

    async def swarm_count(self) -> int:
        count = 0
        with _unavailable_on_redis_errors():
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
        return _snapshot_of(await self._read(keys=[key]))

    def _key(self, info_hash: bytes) -> str:
        return self.PREFIX + info_hash.hex()


def _snapshot_of(answer: object) -> tuple[float, dict[bytes, bytes]]:
    """(Redis' time, the swarm's hash) from a script ending like SNAPSHOT."""
    seconds, micros, flat = cast(list[object], answer)
    # The client is made without decode_responses, so redis-py hands back bytes;
    # its stubs cannot know that.
    if isinstance(flat, bytes):
        fields = flat.split(b"\n") if flat else []
    else:
        fields = cast(list[bytes], flat)
    now = int(cast(bytes, seconds)) + int(cast(bytes, micros)) / 1e6
    return now, dict(zip(fields[::2], fields[1::2], strict=True))


def _upsert_args(entry: PeerEntry, ttl: int) -> list[str | int]:
    """ARGV of UPSERT: the field, the seconds the entry has left, its flags, the key's TTL."""
    left = entry.expires - time.time()
    flags = f"|{int(entry.seeder)}|{int(entry.origin)}"
    return [_field(entry.ip, entry.port), f"{left:.6f}", flags, ttl * 2]


def _field(ip: str, port: int) -> str:
    # "|" never occurs in an IPv4 or IPv6 literal, unlike ":".
    return f"{ip}|{port}"


def _parse_entry(
    field: bytes, value: bytes, redis_now: float, to_local: float
) -> PeerEntry | None:
    """The entry, its expiry moved to this tracker's clock; None if expired or unreadable.

    Read for every peer of the swarm on every announce (32 here): the field's address
    is parsed once per field (``_address``), the value as bytes.
    """
    try:
        ip, port = _address(field)
        expires_text, seeder, origin = value.split(b"|")
        expires = float(expires_text)
    except ValueError:
        return None  # written by something else; treat as expired and clean it up
    if expires <= redis_now:
        return None
    return PeerEntry(ip, port, seeder == b"1", origin == b"1", expires + to_local)


@functools.lru_cache(maxsize=65536)
def _address(field: bytes) -> tuple[str, int]:
    """(ip, port) of a hash field ``ip|port``; ValueError (not cached) if it is none."""
    ip, port = field.decode().rsplit("|", 1)
    return ip, int(port)
