"""Rendezvous hashing: every party agrees, and a member's removal moves only its keys."""

from __future__ import annotations

from krill.rendezvous import owner, rank

MEMBERS = [f"http://10.0.0.{i}:5000" for i in range(1, 5)]
KEYS = [f"sha256:{i:064x}" for i in range(2000)]


def test_ranking_is_the_same_whatever_the_order_of_members() -> None:
    for key in KEYS[:50]:
        assert rank(key, MEMBERS) == rank(key, list(reversed(MEMBERS)))
        assert sorted(rank(key, MEMBERS)) == sorted(MEMBERS)


def test_keys_spread_over_members() -> None:
    counts = {m: 0 for m in MEMBERS}
    for key in KEYS:
        counts[owner(key, MEMBERS) or ""] += 1
    assert all(300 < n < 700 for n in counts.values()), counts  # 500 each, expected


def test_removing_a_member_moves_only_its_keys_to_their_next_in_rank() -> None:
    gone = MEMBERS[0]
    rest = MEMBERS[1:]
    for key in KEYS:
        before = rank(key, MEMBERS)
        after = owner(key, rest)
        if before[0] != gone:
            assert after == before[0]
        else:
            assert after == before[1]


def test_no_members_no_owner() -> None:
    assert owner("sha256:00", []) is None
