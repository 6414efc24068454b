"""The engine's own counts of the tracker's answers (``krill.swarm.stats.Counters``)."""

from __future__ import annotations

from krill.swarm.stats import Counters


def test_a_refusal_stands_until_the_tracker_takes_an_announce_again() -> None:
    counters = Counters()
    counters.announce_answered()
    counters.announce_failed("this tracker needs a node's announce key")
    counters.announce_failed("")  # no answer at all (tracker down): counted, not a refusal
    counters.session_stats({}, torrents=1)
    stats = counters.latest
    assert (stats.announces_ok, stats.announces_failed) == (1, 2)
    assert stats.last_announce_refusal == "this tracker needs a node's announce key"
    counters.announce_answered()
    counters.session_stats({}, torrents=1)
    assert counters.latest.last_announce_refusal == ""
    assert (counters.latest.announces_ok, counters.latest.announces_failed) == (2, 2)
