"""Rendezvous (highest random weight) hashing: which replica owns a key.

Every party that ranks the same members for the same key gets the same
order, with no coordination: the origin replicas (which of them seeds and
caches a blob), and the nodes that choose which origin to ask first. The
weight of a member for a key is ``sha256(member NUL key)`` read as an
integer; the owner is the member with the highest weight, the next in the
ranking takes over when it is gone. Adding or removing one member moves only
the keys that member owns (about 1/n of them), unlike ``hash mod n``; this is
what Kraken's hash ring of origins gives, without the ring's virtual nodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["owner", "rank"]


def _weight(member: str, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{member}\0{key}".encode()).digest()[:16], "big")


def rank(key: str, members: Iterable[str]) -> list[str]:
    """The members from the key's owner down (ties, impossible in practice, by name)."""
    return sorted(set(members), key=lambda m: (_weight(m, key), m), reverse=True)


def owner(key: str, members: Iterable[str]) -> str | None:
    """The member that owns ``key``; None when there are no members."""
    ranked = rank(key, members)
    return ranked[0] if ranked else None
