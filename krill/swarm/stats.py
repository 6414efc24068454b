"""The engine's counters: libtorrent's session totals plus what only Krill counts.

libtorrent answers ``post_session_stats`` with an alert, so fresh counters
are a round trip through the alert pump: ``Counters`` keeps the last answer
(``SwarmEngine.stats``) and the futures of callers waiting for the next one
(``SwarmEngine.fetch_stats``). Pieces that failed their hash check and bytes
the origin feed fetched over HTTP are counted here, by the code that sees
them, and reported with the session totals; so are the tracker's answers to
our announces (a node the tracker refuses is not in the swarm, while its
pulls go on from the origin: the count and the last refusal say so).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

__all__ = ["Counters", "SwarmStats"]


@dataclass(frozen=True)
class SwarmStats:
    """Session totals since the engine started (libtorrent's session counters)."""

    uploaded: int  # payload bytes sent to peers
    downloaded: int  # payload bytes received from peers
    failed_pieces: int = 0  # pieces that failed their hash check (corrupt or lying peers)
    torrents: int = 0
    origin_feed_bytes: int = 0  # piece bytes fetched from origins over HTTP (krill.piecefeed)
    incoming_connections: int = 0  # peer connections accepted (0 for long: see reachability)
    unreachable_downloads: int = 0  # downloads warned about as likely unreachable
    announces_ok: int = 0  # announces the tracker took (answered with its swarm)
    announces_failed: int = 0  # announces refused, failed or timed out
    # The tracker's reason for refusing an announce since the last one it answered
    # ("" then): the tracker is up, but this node is not in its swarms.
    last_announce_refusal: str = ""


class Counters:
    """The last ``SwarmStats``, the callers waiting for fresh ones, and Krill's own counts."""

    def __init__(self) -> None:
        self.latest = SwarmStats(0, 0)
        self.hash_failures = 0
        self.origin_feed_bytes = 0
        self.unreachable_downloads = 0
        self.announces_ok = 0
        self.announces_failed = 0
        self.last_announce_refusal = ""
        self._waiters: list[asyncio.Future[SwarmStats]] = []

    def hash_failed(self) -> None:
        self.hash_failures += 1

    def fed(self, count: int) -> None:
        """``count`` piece bytes arrived from an origin over HTTP."""
        self.origin_feed_bytes += count

    def unreachable_download(self) -> None:
        """A download was warned about: no peer connected in (``reachability``)."""
        self.unreachable_downloads += 1

    def announce_answered(self) -> None:
        self.announces_ok += 1
        self.last_announce_refusal = ""

    def announce_failed(self, refusal: str) -> None:
        """An announce failed: refused by the tracker with ``refusal``, or ("") it got
        no answer (the tracker down, a timeout), which the tracker's health shows."""
        self.announces_failed += 1
        if refusal:
            self.last_announce_refusal = refusal

    def next_stats(self) -> asyncio.Future[SwarmStats]:
        """A future for the stats of the next ``session_stats_alert``."""
        future: asyncio.Future[SwarmStats] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        return future

    @property
    def awaited(self) -> bool:
        """Someone waits for the next ``session_stats_alert`` (the pump must not pause)."""
        return any(not waiter.done() for waiter in self._waiters)

    def session_stats(self, values: dict[str, int], torrents: int) -> None:
        """libtorrent's counters arrived: keep them and answer every waiter."""
        self.latest = SwarmStats(
            uploaded=int(values.get("net.sent_payload_bytes", 0)),
            downloaded=int(values.get("net.recv_payload_bytes", 0)),
            failed_pieces=self.hash_failures,
            torrents=torrents,
            origin_feed_bytes=self.origin_feed_bytes,
            incoming_connections=int(values.get("peer.incoming_connections", 0)),
            unreachable_downloads=self.unreachable_downloads,
            announces_ok=self.announces_ok,
            announces_failed=self.announces_failed,
            last_announce_refusal=self.last_announce_refusal,
        )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(self.latest)
