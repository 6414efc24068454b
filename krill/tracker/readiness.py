"""What the tracker needs to be ready: its peer store answering.

The in-memory store always does; a Redis store must answer ``PING`` (a tracker
whose Redis went away would fail every announce, so it should get no traffic).
"""

from __future__ import annotations

from krill.readiness import Check
from krill.tracker.peerstore import PeerStore, RedisPeerStore

__all__ = ["tracker_checks"]


def tracker_checks(store: PeerStore) -> list[Check]:
    return [Check("peer_store", lambda: _peer_store_reachable(store))]


async def _peer_store_reachable(store: PeerStore) -> str:
    if isinstance(store, RedisPeerStore):
        await store.ping()
        return "redis answered PING"
    return "in memory"
