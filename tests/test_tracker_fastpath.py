"""The announce path's fast ways agree with the general ones they stand in for.

``announce_from_query`` must give what ``parse_announce(parse_query(...))``
gives (the same ``Announce``, or a refusal with the same words) for any
query; a ``SwarmView``'s compact handout must follow ``choose_peers``'
policy and, when whole groups go out, hand out exactly the same peers; and
the memory store's cached view must change whenever the swarm does (a peer
joins, leaves, expires or completes) and only then.
"""

from __future__ import annotations

import random
import time
from urllib.parse import quote_from_bytes

import aiohttp
import pytest
import yarl
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill import bencode
from krill.tracker import server
from krill.tracker.announce import (
    EVENTS,
    Announce,
    AnnounceError,
    announce_from_query,
    choose_peers,
    compact_answer,
    compact_peers,
    parse_announce,
    parse_query,
)
from krill.tracker.config import TrackerConfig
from krill.tracker.peerstore import MemoryPeerStore, PeerEntry
from krill.tracker.server import create_app
from krill.tracker.swarmview import SwarmView, _ring_v4, packed_peer
from tests.metrics_text import parse_metrics
from tests.polling import until
from tests.swarm_helpers import serving
from tests.test_properties_announce import HANDOUTS, asking_as

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SWARM = b"s" * 20

names = st.sampled_from(["info_hash", "peer_id", "port", "left", "event", "numwant", "compact",
                         "uploaded", "info%5Fhash", "x"])
plain = st.sampled_from(["1", "0", "6881", "65536", "-1", "01", "1" * 21, "", "%31", "+1", "²",
                         "started", "st%61rted", "stopped", "bogus", "%30", "Z"])
twenty = st.binary(min_size=19, max_size=21).map(quote_from_bytes)
values = plain | twenty | st.text(max_size=8)
addresses = st.sampled_from(["127.0.0.1", "::1", "::ffff:10.0.0.1", "fe80::1%eth0", "bad"])


def general(raw: str, ip: str) -> Announce | str:
    try:
        return parse_announce(parse_query(raw), ip, default_numwant=50, max_numwant=200)
    except AnnounceError as exc:
        return f"refused: {exc}"


def fast(raw: str, ip: str) -> Announce | str:
    try:
        return announce_from_query(raw, ip, default_numwant=50, max_numwant=200)
    except AnnounceError as exc:
        return f"refused: {exc}"


@PROPERTY
@given(st.lists(st.tuples(names, values), max_size=10), addresses)
def test_the_fast_parse_answers_as_the_general_one(
    pairs: list[tuple[str, str]], ip: str
) -> None:
    raw = "&".join(f"{name}={value}" for name, value in pairs)
    assert fast(raw, ip) == general(raw, ip)


@PROPERTY
@given(st.binary(min_size=20, max_size=20), st.binary(min_size=20, max_size=20),
       st.integers(1, 65535), st.integers(0, 10**12), st.sampled_from(EVENTS),
       st.sampled_from(["", "&compact=0", "&compact=1", "&numwant=7", "&numwant=900"]))
def test_a_client_announce_takes_the_fast_way_to_the_same_answer(
    info_hash: bytes, peer_id: bytes, port: int, left: int, event: str, extra: str
) -> None:
    raw = (f"info_hash={quote_from_bytes(info_hash)}&peer_id={quote_from_bytes(peer_id)}"
           f"&port={port}&uploaded=0&downloaded=0&left={left}&event={event}{extra}")
    assert fast(raw, "127.0.0.1") == general(raw, "127.0.0.1")


def unpacked(v4: bytes, v6: bytes) -> list[bytes]:
    return [v4[i : i + 6] for i in range(0, len(v4), 6)] + [
        v6[i : i + 18] for i in range(0, len(v6), 18)
    ]


def packed(entries: list[PeerEntry]) -> list[bytes]:
    return [packed_peer(p.ip, p.port)[1] for p in entries]


@PROPERTY
@HANDOUTS
def test_the_view_hands_out_as_choose_peers_does(
    swarm: list[PeerEntry], me: PeerEntry, numwant: int, seed: int
) -> None:
    asking = asking_as(me, numwant)
    v4, v6, handed = SwarmView(swarm).compact(me.ip, me.port, asking.seeder, numwant,
                                              random.Random(seed))
    chosen = choose_peers(swarm, asking, random.Random(seed))
    got = unpacked(v4, v6)
    assert handed == len(chosen) == len(got)
    complete = {bytes(b) for b in packed([p for p in swarm if p.seeder or p.origin])}
    others = [p for p in swarm if (p.ip, p.port) != (me.ip, me.port)]
    assert set(got) <= set(packed(others))
    assert len(set(got)) == len(got)
    if asking.seeder:
        assert not set(got) & complete
    else:  # every complete peer that fits comes before any incomplete one (per family)
        wanted_complete = min(numwant, len([p for p in others if p.seeder or p.origin]))
        assert len([b for b in got if b in complete]) == wanted_complete
    if handed == len([p for p in others if not (asking.seeder and (p.seeder or p.origin))]):
        assert sorted(got) == sorted(unpacked(*compact_peers(chosen)))  # whole groups: same peers


def entry(port: int, *, seeder: bool = False, ttl: float = 60) -> PeerEntry:
    return PeerEntry("127.0.0.1", port, seeder, False, time.time() + ttl)


async def test_the_cached_view_follows_every_change_of_the_swarm() -> None:
    store = MemoryPeerStore()
    first = await store.record(SWARM, entry(7001), 60)
    assert (first.seeders, first.leechers) == (0, 1)
    again = await store.record(SWARM, entry(7001), 60)
    assert again is first  # a re-announce changes nothing the answer shows
    joined = await store.record(SWARM, entry(7002), 60)
    assert joined is not first and (joined.seeders, joined.leechers) == (0, 2)
    completed = await store.record(SWARM, entry(7002, seeder=True), 60)
    assert (completed.seeders, completed.leechers) == (1, 1)
    await store.remove(SWARM, "127.0.0.1", 7001)
    left = await store.view(SWARM)
    assert (left.seeders, left.leechers) == (1, 0)
    expiring = await store.record(SWARM, entry(7003, ttl=-1), 60)
    assert (expiring.seeders, expiring.leechers) == (1, 0)  # already expired: not listed
    assert [p.port for p in await store.peers(SWARM)] == [7002]


async def test_a_peer_expires_out_of_an_unchanged_view() -> None:
    """The view is kept between changes, but an expiry is a change even with no announce."""
    store = MemoryPeerStore()
    await store.record(SWARM, entry(7001, ttl=60), 60)
    short = PeerEntry("127.0.0.1", 7002, False, False, time.time() + 2.0)  # outlasts a stall
    view = await store.record(SWARM, short, 60)
    assert view.leechers == 2
    await until(lambda: time.time() > short.expires, "the short-lived peer's expiry to pass")
    assert (await store.view(SWARM)).leechers == 1


v4_peers = st.builds(
    PeerEntry,
    ip=st.sampled_from(["10.0.0.1", "10.0.0.2"]),
    port=st.integers(1, 12),
    seeder=st.booleans(),
    origin=st.booleans(),
    expires=st.just(0.0),
)


def check_compact_answer(swarm: list[PeerEntry], me: PeerEntry, numwant: int, seed: int) -> None:
    """The view's whole answer: ``compact``'s peers (the same ones when groups go out whole,
    complete ones first), in what ``announce.compact_answer`` writes around them."""
    asking = asking_as(me, numwant)
    view = SwarmView(swarm)
    body, handed = view.compact_answer(me.ip, me.port, asking.seeder, numwant, (30, 5),
                                       random.Random(seed))
    v4, v6, expected_handed = view.compact(me.ip, me.port, asking.seeder, numwant,
                                           random.Random(seed))
    answer = bencode.decode(body)
    got = unpacked(answer[b"peers"], answer.get(b"peers6", b""))
    assert body == compact_answer(30, 5, view.seeders, view.leechers, answer[b"peers"],
                                  answer.get(b"peers6", b""))
    assert handed == expected_handed == len(got)
    assert sorted(got) == sorted(unpacked(v4, v6))
    complete = set(packed([p for p in swarm if p.seeder or p.origin]))
    for family in (unpacked(answer[b"peers"], b""), unpacked(b"", answer.get(b"peers6", b""))):
        kinds = [b in complete for b in family]
        assert kinds == sorted(kinds, reverse=True)  # complete peers first, per family


@PROPERTY
@HANDOUTS
def test_the_views_answer_hands_out_as_compact_does(
    swarm: list[PeerEntry], me: PeerEntry, numwant: int, seed: int
) -> None:
    check_compact_answer(swarm, me, numwant, seed)


@PROPERTY
@given(st.lists(v4_peers, max_size=24, unique_by=lambda p: (p.ip, p.port)), v4_peers,
       st.integers(0, 40), st.integers(0, 2**32))
def test_the_views_answer_of_whole_ipv4_groups(
    swarm: list[PeerEntry], me: PeerEntry, numwant: int, seed: int
) -> None:
    if seed % 3 and swarm:  # the asker is usually in its swarm: it has just announced
        me = swarm[seed % len(swarm)]
    check_compact_answer(swarm, me, numwant, seed)


def test_each_member_gets_its_own_ring_and_an_outsider_a_random_rotation() -> None:
    """A whole group goes out as the ring after the asking member (so each member sees a
    different first peer), or, to a peer outside it, rotated at random."""
    swarm = [PeerEntry("10.0.0.1", port, False, False, 0.0) for port in range(1, 6)]
    group = SwarmView(swarm).incomplete
    firsts = set()
    for port in range(1, 6):
        v4 = _ring_v4(group, ("10.0.0.1", port), 0.5)
        assert sorted(unpacked(v4, b"")) == sorted(packed([p for p in swarm if p.port != port]))
        assert v4[:6] == packed_peer("10.0.0.1", port % 5 + 1)[1]
        firsts.add(v4[:6])
    assert len(firsts) == 5
    leaders = {_ring_v4(group, ("10.0.0.9", 1), f / 5)[:6] for f in range(5)}
    assert len(leaders) == 5


async def test_an_ordinary_announce_is_answered_as_the_general_way_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``plain_answer`` (the hot path) and ``answer_announce`` give the same answers: the
    same counts and intervals, the same peers (their order is random) and the same
    counters; and an ordinary announce does take the hot path."""
    app = create_app(TrackerConfig(listen="127.0.0.1:0"))
    taken: list[bool] = []
    hot = server.plain_answer

    def watched(request: web.Request, state: server.AnnounceState) -> web.Response | None:
        answer = hot(request, state)
        taken.append(answer is not None)
        return answer

    def general(request: web.Request, state: server.AnnounceState) -> web.Response | None:
        taken.append(False)
        return None

    def query(port: int, left: int, prefix: bytes = b"-KA0100-") -> str:
        pid = prefix + b"%012d" % port
        return (f"/announce?info_hash={quote_from_bytes(SWARM)}&peer_id={quote_from_bytes(pid)}"
                f"&port={port}&uploaded=0&downloaded=0&left={left}&compact=1&numwant=50")

    async with serving(app) as base, aiohttp.ClientSession() as http:
        async def answer(path: str) -> dict[bytes, object]:
            async with http.get(yarl.URL(base + path, encoded=True)) as response:
                assert response.headers["Content-Type"] == "text/plain"
                return bencode.decode(await response.read())

        peers = [query(7000 + n, 0 if n < 2 else 10) for n in range(8)]
        peers.append(query(7100, 5, b"-KO0100-"))  # an origin, still filling
        for path in peers:
            await answer(path)
        for path in peers:
            monkeypatch.setattr(server, "plain_answer", watched)
            fast = await answer(path)
            monkeypatch.setattr(server, "plain_answer", general)
            slow = await answer(path)
            for got in (fast, slow):
                got[b"peers"] = sorted(unpacked(got[b"peers"], b""))  # type: ignore[arg-type]
            assert fast == slow
        async with http.get(base + "/metrics") as metrics:
            values = parse_metrics(await metrics.text())
    assert taken == [True, False] * len(peers)
    assert values['krill_tracker_announces_total{event="none",result="ok"}'] == 3 * len(peers)
