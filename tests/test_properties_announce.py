"""Properties of the tracker's announce parsing and peer handout (krill/tracker/announce.py).

The tracker answers a bad announce with a bencoded ``failure reason`` only
if parsing raises ``AnnounceError``; anything else is a 500 that BitTorrent
clients read as a dead tracker. So: any raw query string splits without
error and percent-encoded bytes come back exactly (``info_hash`` and
``peer_id`` are arbitrary bytes); any parameters give a valid ``Announce``
or ``AnnounceError``; and the handout never includes the asking peer, never
exceeds ``numwant``, and puts complete peers first.
"""

from __future__ import annotations

import ipaddress
import random
from urllib.parse import quote_from_bytes

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill.tracker.announce import (
    EVENTS,
    Announce,
    AnnounceError,
    choose_peers,
    compact_peers,
    parse_announce,
    parse_query,
)
from krill.tracker.peerstore import PeerEntry

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_NUMWANT = 200

names = st.sampled_from(["info_hash", "peer_id", "port", "left", "event", "numwant", "compact",
                         "uploaded", "x"])
# Values a client could send: arbitrary bytes, numbers in and out of range, Unicode digits.
numbers = st.integers(-(10**25), 10**25).map(lambda n: str(n).encode())
odd_numbers = st.sampled_from([b"", b"-", b"+1", b" 1", b"1.5", b"0x10", b"\xb2", b"\xd9\xa3",
                               b"\xef\xbc\x91", b"1e3", b"9" * 5_000, b"0" * 30 + b"1"])
values = st.binary(max_size=24) | numbers | odd_numbers | st.sampled_from(
    [e.encode() for e in EVENTS])
addresses = st.sampled_from(["127.0.0.1", "::1", "::ffff:10.0.0.1", "fe80::1%eth0", "10.0.0.2",
                             "not an ip", ""])


def parsed_or_refused(params: dict[str, bytes], ip: str) -> Announce | None:
    """The contract: a valid Announce or AnnounceError (any other exception fails the test)."""
    try:
        announce = parse_announce(params, ip, default_numwant=50, max_numwant=MAX_NUMWANT)
    except AnnounceError:
        return None
    assert len(announce.info_hash) == len(announce.peer_id) == 20
    assert 1 <= announce.port <= 65535
    assert announce.left >= 0
    assert 0 <= announce.numwant <= MAX_NUMWANT
    assert announce.event in EVENTS
    ipaddress.ip_address(announce.ip)  # one another peer can dial
    return announce


def query_of(params: dict[str, bytes]) -> str:
    """Names are Latin-1 (parse_query decodes them so; the ones it looks up are ASCII)."""
    return "&".join(f"{quote_from_bytes(k.encode('latin-1'))}={quote_from_bytes(v)}"
                    for k, v in params.items())


@PROPERTY
@given(st.text(max_size=200))
def test_any_query_string_splits(raw: str) -> None:
    params = parse_query(raw)
    assert all(isinstance(v, bytes) for v in params.values())


@PROPERTY
@given(st.dictionaries(names | st.text(st.characters(max_codepoint=255), min_size=1, max_size=8),
                       st.binary(max_size=24)))
def test_percent_encoded_bytes_come_back_exactly(params: dict[str, bytes]) -> None:
    assert parse_query(query_of(params)) == params


@PROPERTY
@given(st.dictionaries(names, values), addresses)
def test_any_parameters_are_an_announce_or_an_announce_error(
    params: dict[str, bytes], ip: str
) -> None:
    parsed_or_refused(params, ip)


@PROPERTY
@given(st.binary(min_size=20, max_size=20), st.binary(min_size=20, max_size=20),
       st.integers(1, 65535), st.integers(0, 2**63), st.sampled_from(EVENTS), addresses,
       st.data())
def test_a_valid_announce_survives_its_query_string(
    info_hash: bytes, peer_id: bytes, port: int, left: int, event: str, ip: str,
    data: st.DataObject,
) -> None:
    params = {"info_hash": info_hash, "peer_id": peer_id, "port": str(port).encode(),
              "left": str(left).encode(), "event": event.encode()}
    announce = parsed_or_refused(parse_query(query_of(params)), ip)
    if ip in ("not an ip", ""):
        assert announce is None
        return
    assert announce is not None
    assert (announce.info_hash, announce.peer_id, announce.port, announce.left) == (
        info_hash, peer_id, port, left)


peers = st.builds(
    PeerEntry,
    ip=st.sampled_from(["10.0.0.1", "10.0.0.2", "::1", "fe80::2"]),
    port=st.integers(1, 5),
    seeder=st.booleans(),
    origin=st.booleans(),
    expires=st.just(0.0),
)


# A swarm, the peer asking, how many it wants, and the handout's random seed.
HANDOUTS = given(
    st.lists(peers, max_size=30, unique_by=lambda p: (p.ip, p.port)),
    peers,
    st.integers(0, 40),
    st.integers(0, 2**32),
)


def asking_as(me: PeerEntry, numwant: int) -> Announce:
    """The announce ``me`` sends (as a seeder if it is one) for ``numwant`` peers."""
    return Announce(b"i" * 20, b"p" * 20, me.ip, me.port, 0 if me.seeder else 1, "", numwant, True)


@PROPERTY
@HANDOUTS
def test_the_handout_policy(
    swarm: list[PeerEntry], me: PeerEntry, numwant: int, seed: int
) -> None:
    asking = asking_as(me, numwant)
    handed = choose_peers(swarm, asking, random.Random(seed))
    others = [p for p in swarm if (p.ip, p.port) != (me.ip, me.port)]
    candidates = [p for p in others if not (asking.seeder and (p.seeder or p.origin))]
    assert len(handed) == min(numwant, len(candidates))
    assert all(p in candidates for p in handed)
    complete = [p.seeder or p.origin for p in handed]
    assert complete == sorted(complete, reverse=True)  # complete peers first


@PROPERTY
@given(st.lists(st.builds(PeerEntry, ip=st.text(max_size=20) | addresses,
                          port=st.integers(-5, 70_000), seeder=st.booleans(),
                          origin=st.booleans(), expires=st.just(0.0)), max_size=10))
def test_compact_lists_skip_what_cannot_be_packed(entries: list[PeerEntry]) -> None:
    v4, v6 = compact_peers(entries)
    assert len(v4) % 6 == 0 and len(v6) % 18 == 0
    packable = 0
    for entry in entries:
        try:
            ipaddress.ip_address(entry.ip)
        except ValueError:
            continue
        packable += 0 <= entry.port <= 65535
    assert len(v4) // 6 + len(v6) // 18 == packable
