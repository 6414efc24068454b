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
import importlib
import ipaddress
import logging
import random
from collections.abc import Callable
from typing import NamedTuple, cast
from urllib.parse import unquote_to_bytes

from krill.tracker.peerstore import PeerEntry
from krill.tracker.swarmview import HANDOUT_RNG, packable_peers

log = logging.getLogger(__name__)

ORIGIN_PEER_ID_PREFIX = b"-KO"
EVENTS = ("started", "completed", "stopped", "paused", "")


class AnnounceError(ValueError):
    """A bad announce; the message is what the client is told."""


class Announce(NamedTuple):
    """One validated announce. A named tuple: made once per announce, at a third of a frozen
    dataclass' cost."""

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
    """Split a raw query string, percent-decoding values to bytes (first occurrence wins).

    A part with neither ``%`` nor ``+`` is taken as it is (its UTF-8 bytes, as
    ``unquote_to_bytes`` would give): of an announce's eight parameters only
    ``info_hash`` and ``peer_id`` are encoded, and unquoting the rest was a
    tenth of an announce's CPU (scripts/bench_load_tracker.py).
    """
    params: dict[str, bytes] = {}
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in name or "+" in name or not name.isascii():
            name = unquote_to_bytes(name.replace("+", " ")).decode("latin-1")
        if name in params:
            continue
        if "%" in value or "+" in value:
            params[name] = unquote_to_bytes(value.replace("+", " "))
        else:
            params[name] = value.encode()
    return params


# What an ordinary announce query holds: (info_hash, peer_id, port, left, event, numwant or -1
# when absent, compact).
PlainFields = tuple[bytes, bytes, int, int, str, int, bool]


def announce_from_query(
    raw_query: str, remote_ip: str, *, default_numwant: int, max_numwant: int
) -> Announce:
    """``parse_announce(parse_query(raw_query), ...)``, at a fraction of its cost.

    An ordinary query (what clients send: plain names, decimal numbers, a
    known event, compact 0 or 1) is read by ``plain_fields``, in C when the
    extension is built; anything else, valid or not, goes the general way,
    which also words the refusal. tests/test_tracker_fastpath.py and
    tests/test_tracker_cquery.py hold the ways to the same answers.
    """
    fields = plain_fields(raw_query)
    if fields is None:
        return parse_announce(
            parse_query(raw_query), remote_ip,
            default_numwant=default_numwant, max_numwant=max_numwant,
        )  # fmt: skip
    info_hash, peer_id, port, left, event, numwant, compact = fields
    return Announce(
        info_hash, peer_id, normalised_ip(remote_ip), port, left, event,
        min(default_numwant if numwant < 0 else numwant, max_numwant), compact,
    )  # fmt: skip


def python_plain_fields(raw_query: str) -> PlainFields | None:
    """An ordinary announce query's fields; None for any other query (the general parse's).

    What ``krill._announcequery.plain_announce`` (krill/_native/announcequery.c)
    computes, and where it is not built, the tracker's own: an ASCII query
    without a fragment, plain names (first occurrence wins), port and left
    (and numwant, if given) of 1-20 digits within 64 bits, port 1-65535, a
    known event, compact 0 or 1, and info_hash and peer_id of 20 bytes once
    percent-decoded (the same few strings announce after announce: decoded
    once each, ``_unquoted``).
    """
    if not raw_query.isascii() or "#" in raw_query:
        return None
    pairs = [part.partition("=") for part in raw_query.split("&") if part]
    raw = {name: value for name, _, value in reversed(pairs)}  # first occurrence wins
    names = "".join(raw)
    if "%" in names or "+" in names:
        return None
    port, left = raw.get("port"), raw.get("left")
    numwant, event = raw.get("numwant"), raw.get("event", "")
    if (
        port is None or left is None or not _decimal(port) or not _decimal(left)
        or (numwant is not None and not _decimal(numwant))
        or event not in EVENTS or raw.get("compact", "1") not in ("0", "1")
    ):  # fmt: skip
        return None
    info_hash, peer_id = raw.get("info_hash"), raw.get("peer_id")
    if info_hash is None or peer_id is None:
        return None
    info_hash_bytes, peer_id_bytes = _value(info_hash), _value(peer_id)
    port_number, left_number = int(port), int(left)
    numwant_number = -1 if numwant is None else int(numwant)
    if (
        len(info_hash_bytes) != 20 or len(peer_id_bytes) != 20
        or not 1 <= port_number <= 65535 or left_number >= 2**64 or numwant_number >= 2**63
    ):  # fmt: skip
        return None  # the general way refuses, or (beyond 64 bits) reads them
    return (
        info_hash_bytes, peer_id_bytes, port_number, left_number, event, numwant_number,
        raw.get("compact") != "0",
    )  # fmt: skip


def python_plain_target_fields(target: str) -> PlainFields | None:
    """``python_plain_fields`` of a request target's query (after its first ``?``)."""
    if not target.isascii():
        return None
    _, mark, query = target.partition("?")
    return python_plain_fields(query) if mark else None


def _c_parse(name: str) -> Callable[[str], PlainFields | None] | None:
    """A C parse, or None where the extension is not built (the Python one stands in)."""
    try:
        module = importlib.import_module("krill._announcequery")
    except ImportError:
        log.debug("tracker.announce_query_in_python (krill._announcequery not built)")
        return None
    return cast(Callable[[str], PlainFields | None], getattr(module, name))


C_PLAIN_FIELDS = _c_parse("plain_announce")
C_PLAIN_TARGET_FIELDS = _c_parse("plain_announce_target")
# What the announce path calls: 0.4 us in C against 4.5 us in Python (docs/benchmarks.md).
plain_fields: Callable[[str], PlainFields | None] = C_PLAIN_FIELDS or python_plain_fields
# The same, given the request target (aiohttp's ``raw_path``) rather than its query.
plain_target_fields: Callable[[str], PlainFields | None] = (
    C_PLAIN_TARGET_FIELDS or python_plain_target_fields
)


def _decimal(text: str) -> bool:
    """ASCII digits only, at most 20 (what ``_integer`` takes without a sign)."""
    return text.isdigit() and text.isascii() and len(text) <= 20


def _value(value: str) -> bytes:
    if "%" in value or "+" in value:
        return _unquoted(value)
    return value.encode()


@functools.lru_cache(maxsize=32768)
def _unquoted(value: str) -> bytes:
    """A percent-encoded value's bytes; cached as an info_hash or peer_id recurs every interval."""
    return unquote_to_bytes(value.replace("+", " "))


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
        ip=normalised_ip(remote_ip),
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


@functools.lru_cache(maxsize=65536)
def normalised_ip(ip: str) -> str:
    """The peer's address as it is stored and handed out: one an other peer can pack and dial.

    Cached like ``_packed_ip`` (a cluster has a few thousand addresses, each
    announcing every interval); an AnnounceError is not cached.

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
    """The handout policy: seeders and origins first, then the rest; each group in random order.

    Seeders and origins first because they can serve every piece, so a new
    peer always has a complete source; a random choice within each group
    spreads load over all seeders and makes downloaders meet different peers,
    which is what makes the swarm share. Capped by ``numwant``; never includes
    the asking peer itself (same IP *and* port: on one host every peer has the
    same IP). A seeder asking gets no other seeders: it needs nothing from them.
    """
    rng = rng or HANDOUT_RNG
    ip, port = asking.ip, asking.port
    complete: list[PeerEntry] = []
    incomplete: list[PeerEntry] = []
    for peer in peers:
        if peer.port == port and peer.ip == ip:
            continue
        (complete if peer.seeder or peer.origin else incomplete).append(peer)
    want = asking.numwant
    if asking.seeder:
        return _pick(incomplete, want, rng)
    chosen = _pick(complete, want, rng)
    if len(chosen) < want:
        chosen += _pick(incomplete, want - len(chosen), rng)
    return chosen


def _pick(group: list[PeerEntry], count: int, rng: random.Random) -> list[PeerEntry]:
    """``count`` peers of ``group`` at random; all of it, rotated at random, if it has no more.

    When the whole group goes out, which peers is not a choice, and libtorrent
    ranks the peers it is given by itself (BEP 40), so a rotation (one random
    number) serves where a shuffle (one per peer) was a third of an announce's
    CPU: swarms are mostly smaller than ``numwant``.
    """
    size = len(group)
    if count >= size:
        if size < 2:
            return group
        start = rng.randrange(size)
        return group[start:] + group[:start]
    return rng.sample(group, count)


def compact_peers(peers: list[PeerEntry]) -> tuple[bytes, bytes]:
    """BEP 23 (IPv4, 6 bytes each) and BEP 7 (IPv6, 18 bytes each) compact lists."""
    v4: list[bytes] = []
    v6: list[bytes] = []
    for _, version, packed in packable_peers(peers):
        (v4 if version == 4 else v6).append(packed)
    return b"".join(v4), b"".join(v6)


def compact_answer(
    interval: int, min_interval: int, complete: int, incomplete: int, v4: bytes, v6: bytes
) -> bytes:
    """The bencoded compact answer, written directly: exactly ``bencode.encode`` of the dict
    (keys in sorted order; ``peers6`` only if there are any), at a fifth of its cost."""
    answer = (
        b"d8:completei%de10:incompletei%de8:intervali%de12:min intervali%de5:peers%d:"
        % (complete, incomplete, interval, min_interval, len(v4))
    ) + v4
    if v6:
        answer += b"6:peers6%d:" % len(v6) + v6
    return answer + b"e"
