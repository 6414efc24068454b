"""A swarm's live peers as an announce answer needs them, built once per change of the swarm.

Between two changes of who is in a swarm (a peer joins, leaves, expires, or
becomes a seeder) every announce to it hands out the same peers, and a
re-announce, the bulk of a tracker's traffic, changes nothing but an
expiry. So the memory store keeps one ``SwarmView`` per swarm and drops it
only on such a change: the seeder count, the two handout groups (complete:
seeders and origins, which can serve every piece; incomplete: the rest) and
each group's BEP 23 / BEP 7 compact bytes, packed once. An announce that gets
a whole group (a swarm no bigger than ``numwant``, the usual case) cuts the
asking peer's 6 or 18 bytes out and rotates the rest at a random peer:
slicing bytes, where choosing, packing and joining 32 peers one by one was a
fifth of the announce handler's time (docs/benchmarks.md, "Announces from a
cached swarm view"). A group bigger than what is wanted is sampled peer by peer as
``choose_peers`` does. On the announce path (``SwarmView.compact_answer``, IPv4
swarms) each group's bytes are kept twice over, so a whole group is one slice:
the asking peer's own group as the ring of the others starting after it, the
other group rotated at random; with the answer's bencoded head kept too, the
answer is one join (issue 20: docs/benchmarks.md, "Announces at 0.7x").

The policy is ``announce.choose_peers``'s (tests/test_tracker_fastpath.py
holds the two to the same peers): complete peers first, then incomplete, a
random order within each, never the asking peer, nothing but incomplete
peers for a seeder.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import random
import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

__all__ = [
    "HANDOUT_RNG",
    "Group",
    "PeerEntry",
    "SwarmView",
    "packable_peers",
    "packed_peer",
]

log = logging.getLogger(__name__)

# One generator for every announce: seeding a new random.Random from os.urandom on each
# announce was a fifth of the handout's cost.
HANDOUT_RNG = random.Random()


class PeerEntry(NamedTuple):
    """One peer of a swarm as the stores keep it (``krill.tracker.peerstore`` re-exports it).

    A named tuple: one is made per announce, at a third of a frozen dataclass' cost.
    """

    ip: str
    port: int
    seeder: bool
    origin: bool
    expires: float


@functools.lru_cache(maxsize=65536)
def packed_peer(ip: str, port: int) -> tuple[int, bytes]:
    """(IP version, packed address and port) of a peer; ValueError or struct.error if none."""
    version, address = _packed_ip(ip)
    return version, address + struct.pack("!H", port)


def packable_peers(peers: Iterable[PeerEntry]) -> Iterator[tuple[PeerEntry, int, bytes]]:
    """Each peer with its IP version and packed address; one that has none is logged, left out.

    Stored by an older tracker or something else sharing the Redis database: one
    bad entry must not fail the answer for everyone in the swarm.
    """
    for peer in peers:
        try:
            version, packed = packed_peer(peer.ip, peer.port)
        except (ValueError, struct.error):
            log.warning("tracker.unpackable_peer ip=%r port=%r", peer.ip, peer.port)
            continue
        yield peer, version, packed


@functools.lru_cache(maxsize=65536)
def _packed_ip(ip: str) -> tuple[int, bytes]:
    """(version, packed bytes) of an address; ValueError if it is none.

    Cached: parsing with ``ipaddress`` was over half of an announce's CPU
    (scripts/bench-load: 32 peers handed out per announce, each parsed again),
    while a cluster has a few thousand addresses at most. ValueError is not
    cached, so a bad entry costs its parse every time (and is logged).
    """
    address = ipaddress.ip_address(ip)
    return address.version, address.packed


class Group:
    """Peers of one kind, with their compact bytes and where each peer sits in them."""

    __slots__ = ("peers", "v4", "v4_twice", "v6", "where")

    def __init__(self, peers: list[PeerEntry]) -> None:
        self.peers = peers
        v4: list[bytes] = []
        v6: list[bytes] = []
        # (ip, port) -> (IP version, byte offset) in v4 or v6.
        self.where: dict[tuple[str, int], tuple[int, int]] = {}
        for peer, version, packed in packable_peers(peers):
            chunks = v4 if version == 4 else v6
            self.where[(peer.ip, peer.port)] = (version, len(chunks) * len(packed))
            chunks.append(packed)
        self.v4 = b"".join(v4)
        self.v6 = b"".join(v6)
        self.v4_twice = self.v4 * 2  # every rotation of v4 is one slice of it

    def whole(self, ip: str, port: int, rng: random.Random) -> tuple[bytes, bytes]:
        """Every peer of the group but (ip, port), packed, each family rotated at random."""
        v4, v6 = self.v4, self.v6
        mine = self.where.get((ip, port))
        if mine is not None:
            version, at = mine
            if version == 4:
                v4 = v4[:at] + v4[at + 6 :]
            else:
                v6 = v6[:at] + v6[at + 18 :]
        return _rotated(v4, 6, rng), _rotated(v6, 18, rng)


def _ring_v4(group: Group, key: tuple[str, int], fraction: float) -> bytes:
    """Every IPv4 peer of ``group`` (which has no IPv6 ones) but ``key``: one slice.

    The asking peer's own group comes as the ring of the others starting just
    after it (each member gets a different order); a group it is not in,
    rotated at ``fraction`` (random, in [0, 1)). Which order matters little:
    the whole group goes out, and libtorrent ranks the peers it is given by
    itself (BEP 40); that each asker sees a different first peer is what
    spreads naive clients.
    """
    mine = group.where.get(key)
    if mine is not None:
        after = mine[1] + 6  # the asking peer's successor in the ring
        return group.v4_twice[after : after + len(group.v4) - 6]
    size = len(group.v4)
    cut = int(fraction * (size // 6)) * 6
    return group.v4_twice[cut : cut + size]


def _rotated(packed: bytes, width: int, rng: random.Random) -> bytes:
    count = len(packed) // width
    if count < 2:
        return packed
    cut = rng.randrange(count) * width
    return packed[cut:] + packed[:cut]


class SwarmView:
    """What an announce answer needs of a swarm: its counts and its two handout groups."""

    __slots__ = ("complete", "head", "incomplete", "only_v4", "peers", "seeders")

    def __init__(self, peers: list[PeerEntry]) -> None:
        self.peers = peers
        self.seeders = sum(1 for p in peers if p.seeder)
        self.complete = Group([p for p in peers if p.seeder or p.origin])
        self.incomplete = Group([p for p in peers if not (p.seeder or p.origin)])
        self.only_v4 = not (self.complete.v6 or self.incomplete.v6)
        # (interval and min interval, the answer's bencoded start), by ``compact_answer``.
        self.head: tuple[tuple[int, int], bytes] | None = None

    @property
    def leechers(self) -> int:
        return len(self.peers) - self.seeders

    def compact(
        self, ip: str, port: int, seeder: bool, numwant: int, rng: random.Random = HANDOUT_RNG
    ) -> tuple[bytes, bytes, int]:
        """(v4, v6, peers handed out) for the peer at (ip, port): ``choose_peers``' policy."""
        groups = (self.incomplete,) if seeder else (self.complete, self.incomplete)
        v4 = v6 = b""
        handed = 0
        for group in groups:
            want = numwant - handed
            if want <= 0:
                break
            size = len(group.peers) - ((ip, port) in group.where)
            if size <= 0:
                continue
            if want >= size:
                four, six = group.whole(ip, port, rng)
                handed += size
            else:
                four, six = _sampled(group.peers, ip, port, want, rng)
                handed += want
            v4 += four
            v6 += six
        return v4, v6, handed

    def compact_answer(
        self, ip: str, port: int, seeder: bool, numwant: int, intervals: tuple[int, int],
        rng: random.Random = HANDOUT_RNG,
    ) -> tuple[bytes, int]:
        """(the bencoded compact answer, peers handed out) for the peer at (ip, port), with
        ``intervals`` (interval, min interval).

        ``compact``'s peers in ``announce.compact_answer``'s bytes. The usual
        case (IPv4 only, every group handed out whole) is two or three slices
        of bytes packed when the view was built and one join: the announce
        path's handout, where choosing and packing peers one by one was a
        fifth of the handler's time.
        """
        head = self.head
        if head is None or head[0] != intervals:
            head = self.head = (intervals, _answer_head(*intervals, self.seeders, self.leechers))
        if not self.only_v4 or numwant < len(self.peers):
            v4, v6, handed = self.compact(ip, port, seeder, numwant, rng)
            body = b"".join((head[1], b"%d:" % len(v4), v4))
            if v6:
                body += b"6:peers6%d:" % len(v6) + v6
            return body + b"e", handed
        key = (ip, port)
        v4 = _ring_v4(self.incomplete, key, rng.random())
        if not seeder and self.complete.v4:
            v4 = _ring_v4(self.complete, key, rng.random()) + v4
        size = len(v4)
        return b"".join((head[1], _LENGTHS[size] if size < 1200 else b"%d:" % size, v4, b"e")), (
            size // 6
        )


# The bencoded length prefixes of peer lists of up to 200 IPv4 peers, written once.
_LENGTHS = tuple(b"%d:" % size for size in range(1200))


def _answer_head(interval: int, min_interval: int, complete: int, incomplete: int) -> bytes:
    """A compact answer's bytes up to its ``peers`` list's length: keys in bencode's order."""
    return (
        b"d8:completei%de10:incompletei%de8:intervali%de12:min intervali%de5:peers"
        % (complete, incomplete, interval, min_interval)
    )


def _sampled(
    peers: list[PeerEntry], ip: str, port: int, count: int, rng: random.Random
) -> tuple[bytes, bytes]:
    """``count`` peers of ``peers`` but (ip, port), chosen at random, packed."""
    others = [p for p in peers if p.port != port or p.ip != ip]
    v4: list[bytes] = []
    v6: list[bytes] = []
    for peer in rng.sample(others, count):
        try:
            version, packed = packed_peer(peer.ip, peer.port)
        except (ValueError, struct.error):
            continue  # logged when the view was built
        (v4 if version == 4 else v6).append(packed)
    return b"".join(v4), b"".join(v6)
