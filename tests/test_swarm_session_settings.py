"""Session settings that a cluster's swarm depends on, as libtorrent holds them."""

from __future__ import annotations

import libtorrent as lt

from krill.swarm import SwarmSettings, session_settings


def applied(settings: SwarmSettings) -> dict[str, object]:
    """What a libtorrent session made from ``settings`` reports (it drops unknown names)."""
    return dict(lt.session(session_settings(settings)).get_settings())


def test_a_refused_announce_is_retried_within_seconds() -> None:
    """libtorrent retries after 5 s + 5 s x fails^2 x tracker_backoff %: 7.5 s after the
    first failure at 50 %, against 17.5 s at its default 250 % (a tracker restart kept
    a swarm apart that long; tests/test_faults_tracker.py)."""
    held = applied(SwarmSettings("http://127.0.0.1:9/announce"))
    assert held["tracker_backoff"] == 50
    assert held["min_announce_interval"] == 5
