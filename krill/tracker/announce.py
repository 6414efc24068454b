"""BEP 3 announce requests and the peer handout policy.

Parsing works on the raw query string: ``info_hash`` and ``peer_id`` are 20
arbitrary bytes, percent-encoded, which a text-decoding query parser would
mangle. Every problem becomes an ``AnnounceError`` whose message the server
sends back as a bencoded ``failure reason`` (with HTTP 200, as BitTorrent
clients expect), never as a 500.

Origins announce with a peer id starting ``-KO`` (Krill Origin; see
``krill.swarm.ORIGIN_PEER_ID_PREFIX``), agents with ``-KA``.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import random
import struct
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from krill.tracker.peerstore import PeerEntry

log = logging.getLogger(__name__)

ORIGIN_PEER_ID_PREFIX = b"-KO"
EVENTS = ("started", "completed", "stopped", "paused", "")


class AnnounceError(ValueError):
    """A bad announce; the message is what the client is told."""


@dataclass(frozen=True, slots=True)
class Announce:
    info_hash: bytes
    peer_id: bytes
    ip: str
    port: int
    left: int
    event: str
    numwant: int
    compact: bool

    @property
    def seeder(self) -> bool:
        return self.left == 0 or self.event == "completed"

    @property
    def origin(self) -> bool:
        return self.peer_id.startswith(ORIGIN_PEER_ID_PREFIX)


def parse_query(raw_query: str) -> dict[str, bytes]:
    """Split a raw query string, percent-decoding values to bytes (first occurrence wins)."""
    params: dict[str, bytes] = {}
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        key = unquote_to_bytes(name.replace("+", " ")).decode("latin-1")
        params.setdefault(key, unquote_to_bytes(value.replace("+", " ")))
    return params


def parse_announce(
    params: dict[str, bytes], remote_ip: str, *, default_numwant: int, max_numwant: int
) -> Announce:
    """Validate an announce's parameters; raise AnnounceError naming what is wrong."""
    info_hash = _required(params, "info_hash")
    if len(info_hash) != 20:
        raise AnnounceError(f"info_hash must be 20 bytes, got {len(info_hash)}")
    peer_id = _required(params, "peer_id")
    if len(peer_id) != 20:
        raise AnnounceError(f"peer_id must be 20 bytes, got {len(peer_id)}")
    port = _integer(params, "port", None)
    if not 1 <= port <= 65535:
        raise AnnounceError(f"port must be 1-65535, got {port}")
    left = _integer(params, "left", None)  # BEP 3 requires it; guessing would make a seeder
    if left < 0:
        raise AnnounceError(f"left must not be negative, got {left}")
    event = params.get("event", b"").decode("latin-1")
    if event not in EVENTS:
        raise AnnounceError(f"unknown event {event!r}; use started, completed or stopped")
    numwant = _integer(params, "numwant", default_numwant)
    if numwant < 0:
        raise AnnounceError(f"numwant must not be negative, got {numwant}")
    compact = params.get("compact", b"1") != b"0"
    return Announce(
        info_hash=info_hash,
        peer_id=peer_id,
        ip=_normalise_ip(remote_ip),
        port=port,
        left=left,
        event=event,
        numwant=min(numwant, max_numwant),
        compact=compact,
    )


def _required(params: dict[str, bytes], name: str) -> bytes:
    value = params.get(name)
    if value is None:
        raise AnnounceError(f"missing {name}")
    return value


def _integer(params: dict[str, bytes], name: str, default: int | None) -> int:
    raw = params.get(name)
    if raw is None:
        if default is None:
            raise AnnounceError(f"missing {name}")
        return default
    text = raw.decode("latin-1")
    digits = text[1:] if text.startswith("-") else text
    # ASCII only: after latin-1 decoding "\xb2" is "²", which isdigit() accepts and int() refuses.
    # Bound the length so a gigantic number cannot cost anything to parse.
    if not (digits.isascii() and digits.isdigit()) or len(text) > 20:
        raise AnnounceError(f"{name} must be an integer, got {text[:40]!r}")
    return int(text)


def _normalise_ip(ip: str) -> str:
    """The peer's address as it is stored and handed out: one an other peer can pack and dial.

    IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes plain IPv4 so compact lists
    include it. An IPv6 zone (``fe80::1%eth0``) is dropped: it names an
    interface on the *tracker's* host, means nothing to other peers, and a
    compact list (BEP 7) has no room for it.
    """
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        raise AnnounceError(f"cannot use the connection's address {ip[:60]!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def choose_peers(
    peers: list[PeerEntry], asking: Announce, rng: random.Random | None = None
) -> list[PeerEntry]:
    """The handout policy: seeders and origins first, then the rest; each group shuffled.

    Seeders and origins first because they can serve every piece, so a new
    peer always has a complete source; shuffling within each group spreads
    load over all seeders and makes downloaders meet different peers, which
    is what makes the swarm share. Capped by ``numwant``; never includes the
    asking peer itself (same IP *and* port: on one host every peer has the
    same IP). A seeder asking gets no other seeders: it needs nothing from them.
    """
    rng = rng or random.Random()
    others = [p for p in peers if not (p.ip == asking.ip and p.port == asking.port)]
    complete = [p for p in others if p.seeder or p.origin]
    incomplete = [p for p in others if not (p.seeder or p.origin)]
    rng.shuffle(complete)
    rng.shuffle(incomplete)
    ordered = incomplete if asking.seeder else complete + incomplete
    return ordered[: asking.numwant]


def compact_peers(peers: list[PeerEntry]) -> tuple[bytes, bytes]:
    """BEP 23 (IPv4, 6 bytes each) and BEP 7 (IPv6, 18 bytes each) compact lists."""
    v4: list[bytes] = []
    v6: list[bytes] = []
    for peer in peers:
        try:
            version, address = _packed_ip(peer.ip)
            packed = address + struct.pack("!H", peer.port)
        except (ValueError, struct.error):
            # Stored by an older tracker or something else sharing the Redis database: one bad
            # entry must not fail the answer for everyone in the swarm.
            log.warning("tracker.unpackable_peer ip=%r port=%r", peer.ip, peer.port)
            continue
        (v4 if version == 4 else v6).append(packed)
    return b"".join(v4), b"".join(v6)


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
